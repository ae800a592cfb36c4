"""The split-K benchmark's pure parts (kernels/bench_skinny.py): the launch grid, the routing rule, and the
routing switch the whole-model A/B holds."""

import pytest

from kernels import skinny
from kernels.bench_gemv import Shape
from kernels.bench_skinny import Row, extra_table, grid, routed, routing


@pytest.mark.parametrize("shape", [Shape(2048, 4096), Shape(3072, 2048), Shape(2048, 2048), Shape(8672, 2048)],
                         ids=lambda s: s.label)
def test_grid_keeps_programs_near_the_sms_and_splits_whole(shape):
    sms = 132
    cfgs = grid(shape, 128, sms)
    assert cfgs and len(set(cfgs)) == len(cfgs)
    narrow = shape.n <= 4096
    for c in cfgs:
        progs = -(-shape.n // c.block_n) * c.split_k
        assert progs <= 4 * sms
        assert c.split_k == 1 or -(-shape.k // c.block_k) >= 2 * c.split_k
        if narrow:
            assert progs >= sms // 2
        else:
            assert c.block_n == 128 and c.split_k <= 2
    if narrow:
        assert {c.block_n for c in cfgs} == {64, 128} and {c.num_warps for c in cfgs} == {4, 8}


def _row(n, k, m, cublas, best, cub_norm=None, par_norm=None):
    return Row(f"{n}x{k}", n, k, m, cublas, best, best, "", 1.0, cub_norm, par_norm)


def test_routed_needs_the_margin_at_every_row_count_as_the_model_runs_the_shape():
    a, b, c = skinny.Config(64, 128, 4, 4, 4), skinny.Config(64, 128, 2, 3, 4), skinny.Config(64, 64, 4, 4, 8)
    rows = [
        (_row(2048, 4096, 128, 9.8, 10.6, 12.9, 10.9), a),  # loses alone, wins with the norm: routed
        (_row(2048, 4096, 32, 9.7, 8.8, 11.6, 9.3), b),
        (_row(3072, 2048, 128, 7.0, 9.3), c),  # loses: not routed
        (_row(2048, 2048, 128, 6.9, 8.3, 9.2, 9.0), a),  # wins by 2 % at 128 rows only: not routed
        (_row(2048, 2048, 32, 6.4, 6.7, 8.4, 7.3), a),
    ]
    assert routed(rows, 0.03) == {(2048, 4096): a}  # the launch of the largest row count
    assert routed(rows, None) == {(2048, 4096): a, (3072, 2048): c, (2048, 2048): a}
    assert routed(rows, 0.0) == {(2048, 4096): a, (2048, 2048): a}
    assert routed([(_row(2048, 4096, 128, 9.8, 10.6), None)], 0.03) == {}  # no launch built


def test_routing_switch_restores_the_shipped_table():
    shipped = dict(skinny.ROUTED)
    with routing({}):
        assert skinny.ROUTED == {}
    assert skinny.ROUTED == shipped
    with pytest.raises(RuntimeError), routing({(1, 2): skinny.Config(16, 16, 1, 1, 1)}):
        assert skinny.ROUTED == {(1, 2): skinny.Config(16, 16, 1, 1, 1)}
        raise RuntimeError
    assert skinny.ROUTED == shipped


def test_routing_switch_sets_and_restores_the_row_limits():
    shipped = dict(skinny.ROUTED_MAX_ROWS)
    with routing({(1, 2): skinny.Config(16, 16, 1, 1, 1)}, {(1, 2): 32}):
        assert skinny.ROUTED_MAX_ROWS == {(1, 2): 32}
    with routing({}):
        assert skinny.ROUTED_MAX_ROWS == {}
    assert skinny.ROUTED_MAX_ROWS == shipped


def test_extra_table_adds_shapes_to_the_shipped_routing():
    table, limits, label = extra_table(["2048x2048:64", "1024X512"], 128, 132)
    assert {k: v for k, v in table.items() if k in skinny.ROUTED} == skinny.ROUTED
    assert table[(2048, 2048)] == skinny.default_config(128, 2048, 2048, "cuda", 132)
    assert (1024, 512) in table and limits == {**skinny.ROUTED_MAX_ROWS, (2048, 2048): 64}
    assert label == "shipped + 2048x2048:64 1024X512"
    assert extra_table(["2048x2048:128"], 128, 132)[1] == skinny.ROUTED_MAX_ROWS  # 128 rows: no limit
    for bad in ("2048", "2048x", "ax2", "2048x2048:8", "2048x2048:129", "0x2048", "2048x2048:6a"):
        with pytest.raises(ValueError, match="--extra"):
            extra_table([bad], 128, 132)


def test_extra_needs_shipped(capsys):
    from kernels.bench_skinny import main

    with pytest.raises(SystemExit) as exc:
        main(["--extra", "2048x2048"])
    assert exc.value.code == 2 and "--extra goes with --shipped" in capsys.readouterr().err
