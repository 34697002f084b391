"""`cove bench profile` at tiny sizes on the CPU: both modes, the cove:: ranges, the files."""
import json

import pytest

from cove.app.cli import build_parser, main
from cove.eval import profile


def test_bench_profile_writes_both_modes_with_the_attention_ranges(tmp_path):
    path = tmp_path / "profile.json"
    assert main(["bench", "profile", "--device", "cpu", "--dtype", "fp32", "--arch", "small",
                 "--frames", "2", "--size", "64", "-o", str(path)]) == 0
    data = json.loads(path.read_text())
    assert set(data["modes"]) == {"spatiotemporal", "cove"} and data["machine"]["device"] == "cpu"
    st, cove = data["modes"]["spatiotemporal"]["ranges"], data["modes"]["cove"]["ranges"]
    # 16 self-attention layers; CGA in the 5 of the 8x8 grid, once per guidance group (2)
    assert st["cove::spatiotemporal_attention"]["calls"] == cove["cove::spatiotemporal_attention"]["calls"] == 16
    assert cove["cove::guided_attention"]["calls"] == 10 and st["cove::guided_attention"]["calls"] == 0
    assert st["cove::spatiotemporal_attention"]["cpu ms"] > 0 and cove["cove::guided_attention"]["cpu ms"] > 0
    for mode in data["modes"].values():
        assert mode["step ms"] > 0 and mode["top ops"][0]["self ms"] > 0
        assert all(op["op"].startswith("aten::") for op in mode["top ops"])
    assert data["step ratio cove / spatiotemporal"] > 0
    assert data["cga ways"] == []  # the CPU computes CGA by SDPA without measuring
    text = (tmp_path / "profile.txt").read_text()
    assert "cove::guided_attention" in text and "step ratio cove / spatiotemporal" in text


@pytest.mark.parametrize("flag, value, message", [("--frames", "1", "--frames: expected an integer >= 2, got 1"),
                                                  ("--size", "100", "--size: expected a positive multiple of 64, got 100")])
def test_bench_profile_refuses_bad_sizes(tmp_path, capsys, flag, value, message):
    assert main(["bench", "profile", flag, value, "-o", str(tmp_path / "p.json")]) == 2
    assert capsys.readouterr().err.strip() == f"cove: error: {message}"
    assert not (tmp_path / "p.json").exists()


def test_cli_registers_bench_profile():
    args = build_parser().parse_args(["bench", "profile", "--frames", "3", "--size", "128"])
    assert args.run is profile.main and (args.frames, args.size) == (3, 128)
