"""kernels.stall_report reads Nsight Compute's source page: samples by reason, loops, the top instructions."""

import pytest

from kernels.stall_report import loops, main, parse_source_csv, report

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)",'
          '"Instructions Executed","stall_long_sb","stall_barrier","stall_long_sb (Not Issued)"')


def _page(rows):
    body = [f'"0x{0x7f00 + 16 * i:x}","{src}","{s}","{s}","{ex}","{lsb}","{bar}","{lsb}"'
            for i, (src, s, ex, lsb, bar) in enumerate(rows)]
    return "\n".join(['"Kernel Name","_step_kernel",', HEADER, *body]) + "\n"


# a prologue, a three-instruction loop taken 8 times (its branch back to 0x7f10), an exit
ROWS = [("      LDG.E R2, desc[UR4][R4.64]", "2", "1", "2", "0"),
        ("      SHF.L.U32 R3, R2, 0x10, RZ", "50", "8", "45", "0"),
        ("@P0   STS.U16 [UR9], R3", "30", "8", "0", "30"),
        ("@!P1  BRA 0x7f10", "5", "8", "0", "0"),
        ("      EXIT", "-", "1", "-", "-")]


def test_the_page_parses_into_instructions_with_their_samples_and_reasons():
    kernel, lines = parse_source_csv(_page(ROWS))
    assert kernel == "_step_kernel" and len(lines) == 5
    assert [ln.opcode for ln in lines] == ["LDG", "SHF", "STS", "BRA", "EXIT"]
    assert lines[1].samples == 50 and lines[1].executed == 8 and lines[1].stalls == {"long_sb": 45}
    assert lines[4].samples == 0 and lines[4].stalls == {}
    assert loops(lines) == [(1, 3, 8)]


def test_the_report_names_the_loop_and_the_waits():
    text = report(*parse_source_csv(_page(ROWS)), top=2)
    assert "5 instructions, 26 executed (warp level), 87 stall samples" in text
    assert "samples by reason: long_sb 54.0%, barrier 34.5%" in text
    assert "loop 1–3: 3 instructions, taken 8 times, 97.7% of samples, 92.3% of executed; SHF 1 STS 1 BRA 1" in text
    top = text.splitlines()[-2:]
    assert top[0].split()[:2] == ["1", "57.47%"] and top[0].endswith("long_sb 45")
    assert top[1].split()[:2] == ["2", "34.48%"] and top[1].endswith("barrier 30")


def test_a_page_without_source_counters_or_not_a_page_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="no Address/Source header"):
        parse_source_csv("just,some\ncsv,text\n")
    with pytest.raises(ValueError, match="--section SourceCounters"):
        parse_source_csv('"Address","Source","Instructions Executed"\n"0x10","NOP","1"\n')
    bad = tmp_path / "notes.csv"
    bad.write_text("nothing here\n")
    with pytest.raises(SystemExit) as exc:
        main(["read", str(bad)])
    assert exc.value.code == 2 and "not an Nsight Compute source page" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["read", str(tmp_path / "missing.csv")])


def test_read_prints_the_report(tmp_path, capsys):
    page = tmp_path / "step.csv"
    page.write_text(_page(ROWS))
    assert main(["read", str(page), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("_step_kernel: 5 instructions") and "loop 1–3" in out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present: the step would run")
def test_step_needs_a_gpu_and_says_so():
    with pytest.raises(SystemExit, match="on a CUDA GPU, for ncu"):
        main(["step", "--rank", "1", "--batch", "2"])
