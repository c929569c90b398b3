//! The handlers the conformance scenarios call, and the probes through which a scenario sees
//! what ran on the serving side.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use icn_engine::{Buf, RequestContext, Route, Router};

use crate::runtime::Runtime;

/// Answers with the request.
pub const ECHO: Route = Route(1);
/// Answers with an empty body, whatever the request.
pub const EMPTY: Route = Route(2);
/// Sleeps [`SLOW_HANDLER_SLEEP`] before echoing: long enough that a test cancels it first.
pub const SLOW: Route = Route(3);
/// No handler is registered for this route.
pub const UNROUTED: Route = Route(99);

/// How long a [`SLOW`] handler sleeps. Far beyond every scenario's own waits, and bounded so a
/// handler that is never cancelled still ends.
pub const SLOW_HANDLER_SLEEP: Duration = Duration::from_secs(30);

/// What the handlers of one node did.
#[derive(Default, Debug)]
pub struct Probe {
    /// Requests served on [`ECHO`] and [`EMPTY`].
    pub served: Cell<u64>,
    /// The context of the last request served on [`ECHO`] or [`EMPTY`].
    pub last_context: Cell<Option<RequestContext>>,
    /// [`SLOW`] handlers that started, that ran to their end, and that were dropped before it.
    pub slow_started: Cell<u64>,
    pub slow_finished: Cell<u64>,
    pub slow_dropped: Cell<u64>,
}

impl Probe {
    fn record(&self, ctx: RequestContext) {
        self.served.set(self.served.get() + 1);
        self.last_context.set(Some(ctx));
    }
}

/// Counts a [`SLOW`] handler as dropped unless it reached its end.
struct DropWatch {
    probe: Rc<Probe>,
    finished: bool,
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.probe.slow_finished
        } else {
            &self.probe.slow_dropped
        };
        counter.set(counter.get() + 1);
    }
}

/// The routes above, reporting to `probe`, sleeping on `runtime`'s clock.
pub fn conformance_router(runtime: &Runtime, probe: Rc<Probe>) -> Router {
    let echo_probe = probe.clone();
    let empty_probe = probe.clone();
    let runtime = runtime.clone();
    Router::new()
        .route(ECHO, move |ctx, request: Buf| {
            echo_probe.record(ctx);
            async move { Ok(request) }
        })
        .route(EMPTY, move |ctx, _request: Buf| {
            empty_probe.record(ctx);
            async move { Ok(Buf::empty()) }
        })
        .route(SLOW, move |_ctx, request: Buf| {
            let probe = probe.clone();
            let runtime = runtime.clone();
            async move {
                probe.slow_started.set(probe.slow_started.get() + 1);
                let mut watch = DropWatch {
                    probe,
                    finished: false,
                };
                runtime.sleep(SLOW_HANDLER_SLEEP).await;
                watch.finished = true;
                Ok(request)
            }
        })
}
