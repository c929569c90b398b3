//! Every knob and limit of icn.
