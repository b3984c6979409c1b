//! Reverse-mode automatic differentiation.
//!
//! A tensor that requires gradients carries a [`Node`]. Every op whose inputs carry nodes (while
//! gradients are enabled) gives its output a node that holds the op's backward function and
//! the nodes of its inputs. The backward function owns what it needs from the forward pass
//! (detached tensors, on the same device), so backward runs the same kernels as the forward
//! pass: gradients never leave the device.
//!
//! [`Tensor::backward`] walks the graph once, from the output towards the leaves, in reverse
//! creation order (node ids grow with creation, so every node is reached after all the nodes
//! that use it), summing the gradient contributions of each node before it runs. Each backward
//! function is taken out of its node when it runs, so the saved tensors are freed by the time
//! `backward` returns, and a second `backward` through the same graph is an error.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Gradients of an op's inputs from the gradient of its output. `needed[i]` says whether input
/// `i` wants one (an input that does not may get `None`).
pub(crate) type BackwardFn =
    Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record the graph (true unless inside [`no_grad`]).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Runs `f` with gradient recording off on this thread (inference, optimizer updates):
/// ops inside it cost nothing extra even when their inputs require gradients.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = NoGradGuard::new();
    f()
}

/// Turns gradient recording off on this thread until dropped (then restores what was there).
#[must_use = "recording is off only while the guard lives"]
pub struct NoGradGuard {
    previous: bool,
}

impl NoGradGuard {
    /// Turns recording off.
    pub fn new() -> NoGradGuard {
        let previous = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { previous }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// A vertex of the graph: a leaf that accumulates its gradient, or the output of an op.
pub(crate) struct Node {
    id: u64,
    kind: NodeKind,
}

enum NodeKind {
    Leaf {
        grad: Mutex<Option<Tensor>>,
    },
    Op {
        name: &'static str,
        /// Taken (and so freed) when backward runs through this node.
        pending: Mutex<Option<Pending>>,
    },
}

struct Pending {
    inputs: Vec<Option<Arc<Node>>>,
    backward: BackwardFn,
}

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl Node {
    /// This node's id: unique, and larger than the ids of every node it depends on.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn leaf() -> Arc<Node> {
        Arc::new(Node {
            id: next_id(),
            kind: NodeKind::Leaf {
                grad: Mutex::new(None),
            },
        })
    }

    pub(crate) fn op(
        name: &'static str,
        inputs: Vec<Option<Arc<Node>>>,
        backward: BackwardFn,
    ) -> Arc<Node> {
        Arc::new(Node {
            id: next_id(),
            kind: NodeKind::Op {
                name,
                pending: Mutex::new(Some(Pending { inputs, backward })),
            },
        })
    }

    pub(crate) fn is_leaf(&self) -> bool {
        matches!(self.kind, NodeKind::Leaf { .. })
    }

    /// The accumulated gradient of a leaf (`None` for op nodes and untouched leaves).
    pub(crate) fn grad(&self) -> Option<Tensor> {
        match &self.kind {
            NodeKind::Leaf { grad } => lock(grad).clone(),
            NodeKind::Op { .. } => None,
        }
    }

    pub(crate) fn set_grad(&self, value: Option<Tensor>) {
        if let NodeKind::Leaf { grad } = &self.kind {
            *lock(grad) = value;
        }
    }
}

impl Drop for Node {
    /// Frees the graph behind this node with an explicit stack instead of one nested drop per
    /// node: a chain of a few hundred thousand recorded ops would otherwise overflow the
    /// thread's stack. (Backward closures hold only detached tensors, never nodes.)
    fn drop(&mut self) {
        let mut stack: Vec<Arc<Node>> = take_inputs(self);
        while let Some(node) = stack.pop() {
            if let Ok(mut owned) = Arc::try_unwrap(node) {
                stack.extend(take_inputs(&mut owned));
                // `owned` drops here with no inputs left, so its own drop does not recurse.
            }
        }
    }
}

/// The input nodes of an op node that has not run its backward (emptied from it).
fn take_inputs(node: &mut Node) -> Vec<Arc<Node>> {
    match &mut node.kind {
        NodeKind::Op { pending, .. } => pending
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|p| p.inputs.into_iter().flatten().collect())
            .unwrap_or_default(),
        NodeKind::Leaf { .. } => Vec::new(),
    }
}

/// Locks a mutex, recovering the data if another thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds `g` to the gradient already collected for `node` (checking its shape).
fn accumulate(slot: &mut Option<Tensor>, g: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        None => g,
        Some(prev) => {
            if prev.shape() != g.shape() {
                return Err(Error::ShapeMismatch {
                    op: "backward",
                    lhs: prev.shape().to_vec(),
                    rhs: g.shape().to_vec(),
                });
            }
            prev.add(&g)?
        }
    });
    Ok(())
}

/// Runs backward from `root` with output gradient `seed`: fills the gradients of the leaves
/// that `root` depends on, adding to what they hold.
///
/// Nodes run in the reverse order of their creation, so a leaf comes off the queue only after
/// every op that used it: its gradient is then complete, and `on_leaf(id)` is told (the
/// leaf's node id, [`Node::id`]).
pub(crate) fn backward(
    root: &Arc<Node>,
    seed: Tensor,
    on_leaf: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    let _no_grad = NoGradGuard::new();
    let mut todo: BTreeMap<u64, (Arc<Node>, Option<Tensor>)> = BTreeMap::new();
    todo.insert(root.id, (root.clone(), Some(seed)));
    while let Some((_, (node, grad))) = todo.pop_last() {
        let Some(grad) = grad else { continue };
        match &node.kind {
            NodeKind::Leaf { grad: slot } => {
                accumulate(&mut lock(slot), grad)?;
                on_leaf(node.id)?;
            }
            NodeKind::Op { name, pending } => {
                let Some(Pending { inputs, backward }) = lock(pending).take() else {
                    return Err(Error::Autograd {
                        op: "backward",
                        reason: format!(
                            "the graph through `{name}` was already freed by an earlier backward"
                        ),
                    });
                };
                let needed: Vec<bool> = inputs.iter().map(Option::is_some).collect();
                let grads = backward(&grad, &needed)?;
                log::trace!("backward through {name}");
                for (input, g) in inputs.into_iter().zip(grads) {
                    if let (Some(input), Some(g)) = (input, g) {
                        let entry = todo
                            .entry(input.id)
                            .or_insert_with(|| (input.clone(), None));
                        accumulate(&mut entry.1, g)?;
                    }
                }
            }
        }
    }
    Ok(())
}
