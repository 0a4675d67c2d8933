//! The nets' 3x3 "same" convolution (stride 1, padding 1), as one autodiff op whose backward
//! is cheaper on the CPU backend than burn 0.21's generic one.
//!
//! Why: burn computes a conv's weight gradient as another convolution over batch-swapped
//! tensors and its bias gradient through a batch/channel transpose; on `flex` both swaps are
//! scalar strided copies, and profiling `bench/train-cpu` put 35 % of the training time there
//! (weight 22 %, bias 13 %). Here the bias gradient is two contiguous sums, and on `flex` the
//! weight gradient is a per-image im2col + gemm (gemm is the crate flex itself uses). Other
//! backends (CUDA) keep burn's own weight gradient. The forward pass and the input gradient
//! are burn's in both cases. `tests` checks every gradient against burn's `Conv2d`.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;

/// stride 1, padding 1, dilation 1, one group: the only convolution the nets use.
pub(crate) fn same_options() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

/// Backends the nets run on: burn's `Backend` plus the 3x3 convolution above.
pub trait ModelBackend: Backend {
    /// `conv2d(x, weight, bias)` with `same_options()`.
    fn conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::conv2d(x, weight, Some(bias), same_options())
    }
    /// Gradient of the loss with respect to `weight`, given the output gradient `grad`.
    fn conv3x3_weight_grad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, grad, same_options())
    }
}

/// Bias gradient without a transpose: `[b, c, h, w]` -> `[b, c, hw]` -> sum over hw, then b.
fn bias_grad<B: Backend>(grad: FloatTensor<B>) -> FloatTensor<B> {
    let s = burn::tensor::TensorMetadata::shape(&grad);
    let (b, c, hw) = (s[0], s[1], s[2] * s[3]);
    let g = B::float_reshape(grad, Shape::new([b, c, hw]));
    let g = B::float_sum_dim(B::float_sum_dim(g, 2), 0);
    B::float_reshape(g, Shape::new([c]))
}

impl ModelBackend for Flex {
    fn conv3x3_weight_grad(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if x.dtype() != burn::tensor::DType::F32 || grad.dtype() != burn::tensor::DType::F32 {
            return Self::conv2d_weight_backward(x, weight, grad, same_options());
        }
        let (xs, gs) = (x.layout().shape().clone(), grad.layout().shape().clone());
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let gw = weight_grad_3x3(x.storage::<f32>(), grad.storage::<f32>(), xs[0], xs[1], gs[1], xs[2], xs[3]);
        FlexTensor::from_data(burn::tensor::TensorData::new(gw, [gs[1], xs[1], 3, 3]))
    }
}

#[cfg(feature = "cuda")]
impl ModelBackend for burn::backend::Cuda {}

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    fn conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv3x3Backward;

        impl<B: ModelBackend> Backward<B, 3> for Conv3x3Backward {
            type State = (NodeId, NodeId);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state) = ops.state;
                let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
                let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_state);
                if let Some(node) = node_x {
                    let g = B::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), same_options());
                    grads.register::<B>(node.id, g);
                }
                if let Some(node) = node_weight {
                    grads.register::<B>(node.id, B::conv3x3_weight_grad(x, weight, grad.clone()));
                }
                if let Some(node) = node_bias {
                    grads.register::<B>(node.id, bias_grad::<B>(grad));
                }
            }
        }

        let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
        match Conv3x3Backward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out = B::conv3x3(x.primitive, weight.primitive, bias.primitive);
                prep.finish((x_state, weight_state), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv3x3(x.primitive, weight.primitive, bias.primitive)),
        }
    }
}

/// Apply a 3x3 "same" `Conv2d` (with bias) through `ModelBackend::conv3x3`.
pub fn conv3x3_forward<B: ModelBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let bias = conv.bias.as_ref().expect("the nets' convolutions have a bias").val();
    let out = B::conv3x3(
        x.into_primitive().tensor(),
        conv.weight.val().into_primitive().tensor(),
        bias.into_primitive().tensor(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// dL/dW for a 3x3 stride-1 padding-1 convolution, NCHW, contiguous:
/// `gw[co, ci, ky, kx] = sum_{b,y,x} g[b, co, y, x] * x[b, ci, y + ky - 1, x + kx - 1]`.
/// Per image: im2col `cols[ci*9 + ky*3 + kx][y*w + x]`, then `gw += g_b * cols^T` (gemm);
/// images are split across the rayon threads, each with its own accumulator.
pub(crate) fn weight_grad_3x3(x: &[f32], g: &[f32], b: usize, cin: usize, cout: usize, h: usize, w: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let hw = h * w;
    let rows = cin * 9;
    let parts = rayon::current_num_threads().clamp(1, b.max(1));
    let per = b.div_ceil(parts);
    let partial: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mut acc = vec![0.0f32; cout * rows];
            let mut cols = vec![0.0f32; rows * hw];
            for bi in p * per..((p + 1) * per).min(b) {
                im2col_3x3(&x[bi * cin * hw..(bi + 1) * cin * hw], cin, h, w, &mut cols);
                let gb = &g[bi * cout * hw..(bi + 1) * cout * hw];
                // SAFETY: acc is cout x rows (row stride rows), gb is cout x hw (row stride hw),
                // cols is rows x hw read as its transpose hw x rows; all in bounds.
                unsafe {
                    gemm::gemm(
                        cout,
                        rows,
                        hw,
                        acc.as_mut_ptr(),
                        1,
                        rows as isize,
                        true,
                        gb.as_ptr(),
                        1,
                        hw as isize,
                        cols.as_ptr(),
                        hw as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            acc
        })
        .collect();
    let mut out = vec![0.0f32; cout * rows];
    for p in partial {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// `cols[(ci*9 + ky*3 + kx) * hw + y*w + x] = img[ci, y+ky-1, x+kx-1]` (0 outside).
fn im2col_3x3(img: &[f32], cin: usize, h: usize, w: usize, cols: &mut [f32]) {
    let hw = h * w;
    for ci in 0..cin {
        let plane = &img[ci * hw..(ci + 1) * hw];
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &mut cols[((ci * 9) + ky * 3 + kx) * hw..][..hw];
                for y in 0..h {
                    let dst = &mut row[y * w..(y + 1) * w];
                    let sy = y as isize + ky as isize - 1;
                    if sy < 0 || sy >= h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[sy as usize * w..(sy as usize + 1) * w];
                    match kx {
                        0 => {
                            dst[0] = 0.0;
                            dst[1..].copy_from_slice(&src[..w - 1]);
                        }
                        1 => dst.copy_from_slice(src),
                        _ => {
                            dst[..w - 1].copy_from_slice(&src[1..]);
                            dst[w - 1] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::module::{Module, Param};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{Distribution, Tensor};

    type Ad = Autodiff<Flex>;

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// Every gradient (input, weight, bias) and the output match burn's own `Conv2d`, on odd
    /// sizes and several channels, with a non-trivial upstream gradient.
    #[test]
    fn gradients_match_burns_conv2d() {
        let device = Default::default();
        for &(b, cin, cout, h, w) in &[(3usize, 2usize, 5usize, 7usize, 6usize), (1, 1, 4, 5, 5), (4, 3, 2, 2, 9)] {
            let conv = Conv2dConfig::new([cin, cout], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init::<Ad>(&device);
            let conv = Conv2d {
                bias: conv.bias.map(|_| Param::from_tensor(Tensor::random([cout], Distribution::Normal(0.0, 1.0), &device))),
                ..conv
            };
            let x = Tensor::<Ad, 4>::random([b, cin, h, w], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let up = Tensor::<Ad, 4>::random([b, cout, h, w], Distribution::Normal(0.0, 1.0), &device);

            let ours = conv3x3_forward(&conv, x.clone());
            let theirs = conv.forward(x.clone());
            close(&ours.to_data().to_vec::<f32>().unwrap(), &theirs.to_data().to_vec::<f32>().unwrap(), "output");

            let g1 = (ours * up.clone()).sum().backward();
            let g2 = (theirs * up).sum().backward();
            let grad = |g: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients, t: &Tensor<Ad, 4>| {
                t.grad(g).unwrap().to_data().to_vec::<f32>().unwrap()
            };
            close(&grad(&g1, &x), &grad(&g2, &x), "x grad");
            let wg = |g| conv.weight.val().grad(g).unwrap().to_data().to_vec::<f32>().unwrap();
            close(&wg(&g1), &wg(&g2), "weight grad");
            let bg = |g| conv.bias.as_ref().unwrap().val().grad(g).unwrap().to_data().to_vec::<f32>().unwrap();
            close(&bg(&g1), &bg(&g2), "bias grad");
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_but_the_input_does() {
        let device = Default::default();
        let conv = Conv2dConfig::new([2, 3], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init::<Ad>(&device).no_grad();
        let x = Tensor::<Ad, 4>::random([2, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let g = conv3x3_forward(&conv, x.clone()).sum().backward();
        assert!(conv.weight.val().grad(&g).is_none());
        assert!(x.grad(&g).is_some());
    }
}
