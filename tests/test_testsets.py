"""Table 4 test sets: counts, determinism, manifest, verification, resume after an interruption."""

import argparse
import json

import numpy as np
import pytest

import nasfe.data.testsets as ts
from nasfe.imageio import write_png_atomic


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A tiny face folder: 3 identities x 2 images of 48x40 (small, so builds are fast)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(3):
        for j in range(2):
            img = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            write_png_atomic(root / f"id{i}" / f"{j}.png", img)
    return root


def test_table4_counts_for_100_faces():
    expected = {"Test-B": 5200, "Test-N": 600, "Test-L": 2400, "Test-BN": 10400, "Test-BNL": 10400}
    assert {name: 100 * len(ts.variants(name)) for name in ts.TEST_SETS} == expected
    b = ts.variants("Test-BN")
    assert len({(v.kernel_id, v.draw) for v in b}) == len(b)  # 52 kernels x 2 distinct draws
    assert {(v.sigma_s, v.sigma_c) for v in ts.variants("Test-N")} == {
        (s, c) for s in (0.05, 0.1, 0.15) for c in (0.05, 0.1)
    }
    assert {v.r for v in ts.variants("Test-BNL")} == {0.15, 0.3}


def test_test_bank_matches_table4():
    bank = ts.test_bank(0)
    assert bank.kinds.count("motion") == 40 and bank.kinds.count("gaussian") == 12
    sizes = bank.sizes[:40].tolist()
    assert min(sizes) == 13 and max(sizes) == 27 and len(set(sizes)) == 8


def _build(out, faces, **kw):
    args = dict(faces=str(faces), sets=["Test-N", "Test-BNL"], seed=1, images=2, progress=False)
    args.update(kw)
    return ts.build_testsets(out, **args)


def test_build_verify_read(tmp_path, faces):
    m = _build(tmp_path / "a", faces)
    assert len(m["clean"]) == 2 and len(m["sets"]["Test-N"]) == 12 and len(m["sets"]["Test-BNL"]) == 208
    assert ts.verify_testsets(tmp_path / "a") == {"Test-N": 12, "Test-BNL": 208}
    rec = m["sets"]["Test-BNL"][5]
    assert rec["c"] == [1, 1, 1] and rec["r"] in (pytest.approx(0.15), pytest.approx(0.3))
    assert rec["kernel_kind"] in ("motion", "gaussian") and 13 <= rec["kernel_size"] <= 27
    item = ts.TestSet(tmp_path / "a", "Test-N", verify=True)[3]
    assert item["y"].shape == item["x"].shape == (3, 48, 40)
    assert item["c"].tolist() == [0, 1, 0]
    assert (item["y"] - item["x"]).abs().mean() > 0.01  # degraded, not a copy
    # same seed, other folder: byte-identical files
    m2 = _build(tmp_path / "b", faces)
    assert [r["sha256"] for r in m2["sets"]["Test-BNL"]] == [r["sha256"] for r in m["sets"]["Test-BNL"]]
    m3 = _build(tmp_path / "c", faces, seed=2)
    assert [r["sha256"] for r in m3["sets"]["Test-N"]] != [r["sha256"] for r in m["sets"]["Test-N"]]


def test_mismatching_files_are_named(tmp_path, faces):
    out = tmp_path / "a"
    m = _build(out, faces, sets=["Test-N"])
    victim = out / m["sets"]["Test-N"][4]["file"]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ts.TestSetError, match=victim.name):
        ts.verify_testsets(out)
    victim.unlink()
    with pytest.raises(ts.TestSetError, match="missing"):
        ts.TestSet(out, "Test-N", verify=True)
    with pytest.raises(ts.TestSetError, match="manifest.json"):
        ts.load_manifest(tmp_path / "nothing")
    with pytest.raises(ts.TestSetError, match="other settings"):
        _build(out, faces, sets=["Test-N"], seed=5)


def test_interrupted_build_resumes_identically(tmp_path, faces, monkeypatch):
    ref = _build(tmp_path / "ref", faces, sets=["Test-L"])
    import nasfe.data.testsets as io  # the builder's own name for the writer

    real = io.write_png_atomic
    calls = {"n": 0}

    def flaky(path, array):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt("simulated interruption")
        real(path, array)

    monkeypatch.setattr(io, "write_png_atomic", flaky)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _build(out, faces, sets=["Test-L"])
    monkeypatch.setattr(io, "write_png_atomic", real)
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.tmp"))  # no half-written file
    written = len(list((out / "Test-L").glob("*.png")))
    assert 0 < written < 48
    m = _build(out, faces, sets=["Test-L"])
    assert [r["sha256"] for r in m["sets"]["Test-L"]] == [r["sha256"] for r in ref["sets"]["Test-L"]]
    assert json.loads((out / "manifest.json").read_text())["sets"]["Test-L"][0]["c"] == [0, 1, 1]


def test_cli_entry_points(tmp_path, faces, capsys):
    parser = ts.add_testsets_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--faces", str(faces), "--out", str(tmp_path / "o"), "--sets", "Test-N", "--images", "1", "--seed", "3"]
    )
    assert ts.testsets_main(args) == 0
    assert "Test-N: 6 images" in capsys.readouterr().out
    bad = parser.parse_args(["--faces", str(tmp_path / "nope"), "--out", str(tmp_path / "p")])
    assert ts.testsets_main(bad) == 2
    assert "nope" in capsys.readouterr().err


def test_protocol_options_are_applied_and_recorded(tmp_path, faces):
    """--noise-model and --kernel-mode reach the images and the kernels, and are recorded in
    build.json and the manifest; a build from before the options existed resumes as the defaults."""
    from nasfe.degrade.kernels import KernelBank, kernel_centroid

    base = _build(tmp_path / "a", faces, sets=["Test-L"])
    assert base["settings"]["noise_model"] == "after-r" and base["settings"]["kernel_mode"] == "centred"
    m = _build(tmp_path / "b", faces, sets=["Test-L", "Test-B"], noise_model="before-r", kernel_mode="paper-compatible")
    assert m["settings"]["noise_model"] == "before-r" and m["settings"]["kernel_mode"] == "paper-compatible"
    assert json.loads((tmp_path / "b" / "build.json").read_text())["noise_model"] == "before-r"
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["settings"]["kernel_mode"] == "paper-compatible"
    # milder noise under low light: Test-L differs from the default build (same seeds and curves)
    assert [r["sha256"] for r in m["sets"]["Test-L"]] != [r["sha256"] for r in base["sets"]["Test-L"]]
    off = kernel_centroid(KernelBank.load(tmp_path / "b" / "kernels.pt").kernels[:40].double().numpy()) - 13
    assert np.hypot(*off.T).max() > 1.0
    assert KernelBank.load(tmp_path / "b" / "kernels.pt").mode == "paper-compatible"
    with pytest.raises(ts.TestSetError, match="other settings"):
        _build(tmp_path / "b", faces, sets=["Test-L"])  # the default noise model on a before-r build
    # an older build.json without the protocol keys is the default protocol
    old = json.loads((tmp_path / "a" / "build.json").read_text())
    del old["noise_model"], old["kernel_mode"]
    (tmp_path / "a" / "build.json").write_text(json.dumps(old))
    again = _build(tmp_path / "a", faces, sets=["Test-L"])
    assert [r["sha256"] for r in again["sets"]["Test-L"]] == [r["sha256"] for r in base["sets"]["Test-L"]]
    with pytest.raises(ValueError, match="noise-model"):
        _build(tmp_path / "c", faces, noise_model="later")
    parser = ts.add_testsets_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--out", "o", "--noise-model", "before-r", "--kernel-mode", "paper-compatible"])
    assert (args.noise_model, args.kernel_mode) == ("before-r", "paper-compatible")
    cli = parser.parse_args(
        [
            "--faces",
            str(faces),
            "--out",
            str(tmp_path / "d"),
            "--sets",
            "Test-N",
            "--images",
            "1",
            "--noise-model",
            "scene-variance",
            "--kernel-mode",
            "paper-compatible",
        ]
    )
    assert ts.testsets_main(cli) == 0
    assert ts.load_manifest(tmp_path / "d")["settings"]["noise_model"] == "scene-variance"
