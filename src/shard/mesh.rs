//! Cross-shard messaging: a shard asks another to run a closure and, if asked, to send the
//! result back.
//!
//! Messages to one peer are queued in a local outbox and sent as one batch per scheduler pass
//! over a bounded glommio channel, so many connections' requests share one cross-core
//! hand-off. Requests from one shard to another are run in the order they were queued; a reply
//! finds its waiting future by request id. A call to the shard itself runs at once, with no
//! message.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use glommio::channels::channel_mesh::{Receivers, Senders};
use log::warn;

use super::Shard;

/// Batches a channel between two shards holds before senders wait (backpressure).
pub const CHANNEL_BATCHES_MAX: usize = 1024;

/// A result crossing between shards.
pub type Payload = Box<dyn Any + Send>;

/// What a request's closure produced on the target shard.
pub enum Outcome {
    Ready(Payload),
    /// The work must wait (for a lock, for example); the reply goes when this completes.
    Pending(Pin<Box<dyn Future<Output = Payload>>>),
}

type Job = Box<dyn FnOnce(&Rc<Shard>) -> Outcome + Send>;

enum Kind {
    /// Run the job; reply unless the id is 0.
    Request(Job),
    Response(Payload),
}

/// One message between shards.
pub struct Envelope {
    id: u64,
    kind: Kind,
}

/// A batch of messages sent as one channel item.
pub type Batch = Vec<Envelope>;

/// The reply could not be had: the peer is gone or sent something unexpected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard {0} did not answer")]
pub struct MeshError(pub usize);

#[derive(Default)]
struct Slot {
    value: Option<Payload>,
    waker: Option<Waker>,
    closed: bool,
}

/// Wakes a parked flusher when its outbox gets something.
#[derive(Default)]
struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// This shard's end of the mesh.
pub struct Mesh {
    outboxes: Vec<RefCell<Batch>>,
    signals: Vec<Signal>,
    pending: RefCell<HashMap<u64, Rc<RefCell<Slot>>>>,
    next_id: Cell<u64>,
}

impl Mesh {
    pub fn new(shards: usize) -> Self {
        Mesh {
            outboxes: (0..shards).map(|_| RefCell::new(Vec::new())).collect(),
            signals: (0..shards).map(|_| Signal::default()).collect(),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
        }
    }

    fn push(&self, to: usize, envelope: Envelope) {
        self.outboxes[to].borrow_mut().push(envelope);
        self.signals[to].raise();
    }

    fn request(&self, to: usize, job: Job, want_reply: bool) -> Option<Rc<RefCell<Slot>>> {
        let (id, slot) = if want_reply {
            let id = self.next_id.get();
            self.next_id.set(id + 1);
            let slot = Rc::new(RefCell::new(Slot::default()));
            self.pending.borrow_mut().insert(id, Rc::clone(&slot));
            (id, Some(slot))
        } else {
            (0, None)
        };
        self.push(
            to,
            Envelope {
                id,
                kind: Kind::Request(job),
            },
        );
        slot
    }
}

/// Runs on each shard: sends outboxes and serves what peers send.
pub fn start(shard: &Rc<Shard>, senders: Senders<Batch>, mut receivers: Receivers<Batch>) {
    let senders = Rc::new(senders);
    for peer in 0..shard.count() {
        if peer == shard.index() {
            continue;
        }
        let s = Rc::clone(shard);
        let tx = Rc::clone(&senders);
        glommio::spawn_local(async move {
            loop {
                s.mesh().signals[peer].wait().await;
                let batch = std::mem::take(&mut *s.mesh().outboxes[peer].borrow_mut());
                if batch.is_empty() {
                    continue;
                }
                if tx.send_to(peer, batch).await.is_err() {
                    warn!("shard {} lost its channel to shard {peer}", s.index());
                    return;
                }
            }
        })
        .detach();
    }
    for (peer, stream) in receivers.streams() {
        let s = Rc::clone(shard);
        glommio::spawn_local(async move {
            while let Some(batch) = stream.recv().await {
                for envelope in batch {
                    serve(&s, peer, envelope);
                }
            }
            warn!("shard {} lost its channel from shard {peer}", s.index());
        })
        .detach();
    }
}

fn serve(shard: &Rc<Shard>, from: usize, envelope: Envelope) {
    match envelope.kind {
        Kind::Request(job) => {
            let id = envelope.id;
            match job(shard) {
                Outcome::Ready(value) => reply(shard, from, id, value),
                Outcome::Pending(fut) => {
                    let s = Rc::clone(shard);
                    glommio::spawn_local(async move {
                        let value = fut.await;
                        reply(&s, from, id, value);
                    })
                    .detach();
                }
            }
        }
        Kind::Response(value) => {
            let slot = shard.mesh().pending.borrow_mut().remove(&envelope.id);
            if let Some(slot) = slot {
                let mut slot = slot.borrow_mut();
                slot.value = Some(value);
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
        }
    }
}

fn reply(shard: &Rc<Shard>, to: usize, id: u64, value: Payload) {
    if id != 0 {
        shard.mesh().push(
            to,
            Envelope {
                id,
                kind: Kind::Response(value),
            },
        );
    }
}

/// The future result of a call to another shard.
pub struct Call<R> {
    state: CallState,
    shard: usize,
    _result: std::marker::PhantomData<fn() -> R>,
}

enum CallState {
    Ready(Option<Payload>),
    Local(Pin<Box<dyn Future<Output = Payload>>>),
    Remote(Rc<RefCell<Slot>>),
}

impl<R: 'static> Future for Call<R> {
    type Output = Result<R, MeshError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let payload = match &mut this.state {
            CallState::Ready(value) => value.take(),
            CallState::Local(fut) => match fut.as_mut().poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => return Poll::Pending,
            },
            CallState::Remote(slot) => {
                let mut slot = slot.borrow_mut();
                match slot.value.take() {
                    Some(v) => Some(v),
                    None if slot.closed => None,
                    None => {
                        slot.waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
            }
        };
        let result = payload
            .and_then(|p| p.downcast::<R>().ok())
            .map(|b| *b)
            .ok_or(MeshError(this.shard));
        Poll::Ready(result)
    }
}

impl Shard {
    /// Runs `job` on shard `target` and returns its result. On this shard it runs at once.
    pub fn call<R, F>(self: &Rc<Self>, target: usize, job: F) -> Call<R>
    where
        R: Send + 'static,
        F: FnOnce(&Rc<Shard>) -> R + Send + 'static,
    {
        self.call_outcome(target, move |s| Outcome::Ready(Box::new(job(s))))
    }

    /// Runs `job` on shard `target`; the future it makes runs there and its output comes back.
    pub fn call_async<R, F, Fut>(self: &Rc<Self>, target: usize, job: F) -> Call<R>
    where
        R: Send + 'static,
        F: FnOnce(&Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        self.call_outcome(target, move |s| {
            let fut = job(s);
            Outcome::Pending(Box::pin(async move { Box::new(fut.await) as Payload }))
        })
    }

    /// Runs `job` on shard `target`, which decides itself whether it must wait.
    pub fn call_outcome<R, F>(self: &Rc<Self>, target: usize, job: F) -> Call<R>
    where
        R: Send + 'static,
        F: FnOnce(&Rc<Shard>) -> Outcome + Send + 'static,
    {
        let state = if target == self.index() {
            match job(self) {
                Outcome::Ready(v) => CallState::Ready(Some(v)),
                Outcome::Pending(fut) => CallState::Local(fut),
            }
        } else {
            match self.mesh().request(target, Box::new(job), true) {
                Some(slot) => CallState::Remote(slot),
                None => CallState::Ready(None),
            }
        };
        Call {
            state,
            shard: target,
            _result: std::marker::PhantomData,
        }
    }

    /// Runs `job` on shard `target` without waiting for it. Jobs posted to one shard run in
    /// the order they were posted, after any request queued before them.
    pub fn post<F>(self: &Rc<Self>, target: usize, job: F)
    where
        F: FnOnce(&Rc<Shard>) + Send + 'static,
    {
        if target == self.index() {
            job(self);
            return;
        }
        let job: Job = Box::new(move |s| {
            job(s);
            Outcome::Ready(Box::new(()))
        });
        self.mesh().request(target, job, false);
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for slot in self.pending.borrow().values() {
            let mut slot = slot.borrow_mut();
            slot.closed = true;
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }
}
