"""kernels.trace's grouping: every matrix-product kernel the models launch counts as a product (ours and
cuBLAS's), and the glue, scans and attention do not."""

import pytest

from kernels.trace import MATMUL


@pytest.mark.parametrize("name", ["_gemv_kernel", "_skinny_kernel", "nvjet_sm90_tst_128x64_64x8_1x2_h_bz_TNT",
                                  "sm90_xmma_gemm_bf16bf16_bf16f32", "cutlass_80_tensorop_s16816gemm"])
def test_products_count_as_products(name):
    assert MATMUL.search(name)


@pytest.mark.parametrize("name", ["_step_kernel", "_add_rms_norm_kernel", "_silu_mul_kernel", "_partial_kernel",
                                  "_merge_kernel", "_rope_decode_kernel", "_split_sum_kernel"])
def test_glue_scans_and_attention_do_not(name):
    assert not MATMUL.search(name)
