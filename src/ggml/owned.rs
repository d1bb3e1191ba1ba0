//! `OwnedGraph<'env>`: a compute context together with the graph built in it and chosen tensors of it, so that
//! the graph can be kept and computed again. A decode step's graph has the same shape as the previous step's
//! (llama.cpp reuses it the same way); building and allocating it anew cost about 4% of a 4B step.

use std::marker::PhantomData;

use super::{Context, Graph, Tensor};

/// What a graph build returns: the graph and the tensors the caller wants back (inputs to set, outputs to
/// read), in the caller's order.
pub struct Built<'c> {
    pub graph: Graph<'c>,
    pub tensors: Vec<Tensor<'c>>,
}

/// Handed to the build closure: it ties the context's lifetime `'c` to the tensors of other contexts the graph
/// may use (`'env`, which outlives `'c`), as `std::thread::scope` ties its threads to what they borrow.
pub struct Env<'c, 'env> {
    _scope: PhantomData<&'c mut &'env ()>,
}

/// A context, its graph and chosen tensors, owned together. The graph and tensors live in the context's pool
/// and buffers; the tensors of other contexts they use (weights, caches) outlive `'env`.
pub struct OwnedGraph<'env> {
    // Lifetimes erased to 'static: they borrow `ctx` (and `'env`), which the accessors restore. Neither has a
    // Drop, and the context is dropped after them all the same.
    graph: Graph<'static>,
    tensors: Vec<Tensor<'static>>,
    /// Never read: owned so that the graph's memory lives as long as `self`.
    _ctx: Context,
    _env: PhantomData<&'env ()>,
}

impl<'env> OwnedGraph<'env> {
    /// Builds a graph in `ctx` with `f` and keeps all three together.
    pub fn build<E>(
        ctx: Context,
        f: impl for<'c> FnOnce(&'c Context, Env<'c, 'env>) -> Result<Built<'c>, E>,
    ) -> Result<Self, E> {
        let built = f(&ctx, Env { _scope: PhantomData })?;
        // SAFETY: only the lifetime changes. The graph and tensors point into the context's ggml pool and its
        // buffers, which stay where they are when the `Context` value moves and live until it drops; `self`
        // hands them out only for as long as it is borrowed, so they never outlive the context. Tensors of
        // other contexts outlive 'env, which bounds `self`.
        let (graph, tensors) = unsafe {
            (
                std::mem::transmute::<Graph<'_>, Graph<'static>>(built.graph),
                std::mem::transmute::<Vec<Tensor<'_>>, Vec<Tensor<'static>>>(built.tensors),
            )
        };
        Ok(OwnedGraph {
            graph,
            tensors,
            _ctx: ctx,
            _env: PhantomData,
        })
    }

    pub fn graph(&self) -> &Graph<'_> {
        &self.graph
    }

    /// Tensor `i` of those the build returned.
    pub fn tensor(&self, i: usize) -> Tensor<'_> {
        self.tensors[i]
    }

    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }
}
