//! The same parity cases as tests/emu_parity.rs, on a real GPU (device 0) when there is one; otherwise
//! each test prints that it was skipped and why. On a GPU the hgemm case runs the tensor-core (mma.sync)
//! path rather than the scalar twin.

mod common;

use common::{cases, Gpu};

macro_rules! gpu_tests {
    ($($name:ident => $case:path),* $(,)?) => {
        $(#[test] fn $name() {
            match Gpu::get() {
                Ok(g) => $case(&g),
                // Written straight to stderr (not through eprintln!, which the test harness captures) so
                // that a skip is visible in every test run.
                Err(why) => {
                    use std::io::Write;
                    let _ = writeln!(std::io::stderr(), "SKIPPED {}: no CUDA device ({why})", stringify!($name));
                }
            }
        })*
    };
}

gpu_tests! {
    parity_gpu_activations => cases::elementwise_activations,
    parity_gpu_binary_axpby_fill => cases::elementwise_binary_axpby_fill,
    parity_gpu_geglu => cases::geglu_fwd_bwd,
    parity_gpu_casts => cases::casts_round_to_nearest_even,
    parity_gpu_adamw => cases::adamw_matches_cpu_optimizer,
    parity_gpu_reductions => cases::reductions,
    parity_gpu_sgemm => cases::sgemm_odd_shapes_transposes_batched,
    parity_gpu_hgemm_tensor_cores => cases::hgemm_bf16_f16,
    parity_gpu_conv => cases::conv_im2col_col2im_bias,
    parity_gpu_softmax => cases::softmax_fwd_bwd_causal,
    parity_gpu_group_norm => cases::group_norm_fwd_bwd,
    parity_gpu_layer_norm => cases::layer_norm_fwd_bwd,
    parity_gpu_attention => cases::attention_fwd_bwd_self_cross_causal,
    parity_gpu_layout => cases::layout_upsample_permute_copy,
}
