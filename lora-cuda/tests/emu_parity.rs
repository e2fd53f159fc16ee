//! Every kernel's source, run on the CPU through the CUDA emulation harness (kernels/emu), against the
//! CPU reference. This is how CI checks the kernels without a GPU.

mod common;

use common::{cases, Emu};

macro_rules! emu_tests {
    ($($name:ident => $case:path),* $(,)?) => {
        $(#[test] fn $name() { $case(Emu::get()); })*
    };
}

emu_tests! {
    parity_emu_activations => cases::elementwise_activations,
    parity_emu_binary_axpby_fill => cases::elementwise_binary_axpby_fill,
    parity_emu_geglu => cases::geglu_fwd_bwd,
    parity_emu_casts => cases::casts_round_to_nearest_even,
    parity_emu_adamw => cases::adamw_matches_cpu_optimizer,
    parity_emu_reductions => cases::reductions,
    parity_emu_sgemm => cases::sgemm_odd_shapes_transposes_batched,
    parity_emu_hgemm_scalar_twin => cases::hgemm_bf16_f16,
    parity_emu_conv => cases::conv_im2col_col2im_bias,
    parity_emu_softmax => cases::softmax_fwd_bwd_causal,
    parity_emu_group_norm => cases::group_norm_fwd_bwd,
    parity_emu_layer_norm => cases::layer_norm_fwd_bwd,
    parity_emu_attention => cases::attention_fwd_bwd_self_cross_causal,
    parity_emu_layout => cases::layout_upsample_permute_copy,
}
