"""The emulated Raspberry Pi CPU (edgelab.pi.emulate): the bundle's own predict.py gives x86's
predictions under qemu as a Pi 4 core (cortex-a72) and a Pi 5 core (cortex-a76), for a 1x28x28
and a 3x32x32 model, and the emulated Pi 4 kills an onnxruntime built for newer cores. The arm64
tests are never skipped: `make test` sets the emulator up (`make pi-rootfs`) and they must pass."""
import shutil

import pytest
import torch
import torch.nn as nn

from edgelab.pi import bundle as pib
from edgelab.pi import emulate


def tiny_cnn(channels):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10)).eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return pib.build(tiny_cnn(1), tmp_path_factory.mktemp("b") / "pi_bundle",
                     torch.zeros(2, 1, 28, 28), name="tiny")


@pytest.fixture(scope="module")
def available():
    ok, why = emulate.available()
    assert ok, f"the arm64 check must run in `make test` (run `make pi-rootfs` first): {why}"


@pytest.mark.heavy
def test_the_bundle_predicts_the_same_on_an_emulated_cortex_a72(bundle, available):
    res = emulate.verify(bundle, images=16)
    assert res["machine"] == "aarch64" and res["python"].startswith("3.11")
    assert res["cpu"]["qemu_cpu"] == "cortex-a72"
    assert not res["cpu"]["dotprod"] and not res["cpu"]["atomics"], res["cpu"]  # Armv8.0, an A72
    assert res["match"] and res["mismatches"] == 0 and res["images"] == 16
    assert res["max_abs_logit_diff"] < 1e-4


@pytest.mark.heavy
def test_the_bundle_predicts_the_same_on_an_emulated_pi5_core_with_dot_product(bundle, available):
    res = emulate.verify(bundle, images=8, qemu_cpu="cortex-a76")
    assert res["cpu"]["qemu_cpu"] == "cortex-a76"
    assert res["cpu"]["dotprod"] and res["cpu"]["fp16"] and res["cpu"]["atomics"], res["cpu"]
    assert res["match"] and res["max_abs_logit_diff"] < 1e-4


@pytest.mark.heavy
def test_a_colour_32x32_bundle_predicts_the_same_on_the_emulated_pi4(tmp_path, available):
    colour = pib.build(tiny_cnn(3), tmp_path / "pi_bundle", torch.zeros(2, 3, 32, 32),
                       mean=0.5, std=0.25)
    res = emulate.verify(colour, images=8)
    assert res["images"] == 8 and res["match"] and res["max_abs_logit_diff"] < 1e-4, res


@pytest.mark.heavy
def test_the_emulated_pi4_core_kills_an_onnxruntime_built_for_newer_cores(bundle, available):
    # the check has teeth: onnxruntime 1.21.0 uses instructions an Armv8.0 core lacks
    a72 = emulate.illegal_instruction_check(bundle / "model.onnx", "cortex-a72")
    assert a72["pinned"] == 0, a72["pinned_stderr"]
    assert a72["old"] == -4 and a72["sigill"], a72["old_stderr"]     # SIGILL
    a76 = emulate.illegal_instruction_check(bundle / "model.onnx", "cortex-a76")
    assert a76["pinned"] == 0 and a76["old"] == 0, a76


def test_the_emulated_cpu_is_a_pi_core_or_a_clear_error():
    assert "CPU part\t: 0xd0b" in emulate.emulated_cpuinfo(1, "cortex-a76")
    assert "CPU part\t: 0xd08" in emulate.emulated_cpuinfo(1, "cortex-a72")
    with pytest.raises(ValueError, match="cortex-a72"):
        emulate.emulated_cpuinfo(1, "max")


def test_cpu_features_name_the_bits_that_separate_the_two_pis():
    a72 = emulate.cpu_features(0b11111111)                    # fp ... crc32
    assert not (a72["dotprod"] or a72["fp16"] or a72["atomics"])
    a76 = emulate.cpu_features(0b11111111 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 20)
    assert a76["dotprod"] and a76["fp16"] and a76["atomics"] and "asimddp" in a76["features"]


def test_unavailable_says_why_and_how_to_enable_it(tmp_path):
    ok, why = emulate.available(tmp_path / "no-rootfs")
    assert not ok and "make pi-rootfs" in why


def test_summary_names_the_board_and_the_agreement():
    res = {"cpu": {"qemu_cpu": "cortex-a76"}, "runtime": "onnxruntime", "runtime_version": "1.32.0", "images": 300,
           "mismatches": 0, "max_abs_logit_diff": 2e-6}
    line = emulate.summary(res)
    assert line.startswith("Raspberry Pi 5 (cortex-a76)") and "300 of 300" in line


def test_the_arm64_bar_reads_the_bundle_record_of_05():
    from edgelab import targets

    rec = {"notebook": "05_deploy_pi", "name": "pruned50-int8",
           "bundle": {"arm64": {"images": 300, "mismatches": 0, "match": True}}}
    assert targets._arm64_match()({"records": [rec]}) == ("300 of 300 images equal", True)
    rec["bundle"]["arm64"] = {"images": 300, "mismatches": 2, "match": False}
    assert targets._arm64_match()({"records": [rec]})[1] is False
    assert targets._arm64_match()({"records": [dict(rec, bundle={"arm64": None})]}) is None


@pytest.mark.heavy
def test_a_litert_bundle_predicts_the_same_on_both_emulated_pis(tmp_path, available):
    from edgelab import edge

    files = edge.export(tiny_cnn(1), tmp_path / "m", "litert", torch.zeros(2, 1, 28, 28),
                        calibration=torch.randn(16, 1, 28, 28), batches=(1,))
    lite = pib.build(files[1], tmp_path / "pi_bundle", name="tiny-litert")
    for cpu, res in emulate.verify_pis(lite, images=8).items():
        assert res["runtime"] == "litert" and res["cpu"]["qemu_cpu"] == cpu
        assert res["match"] and res["max_abs_logit_diff"] < 1e-4, res


@pytest.mark.heavy
def test_an_executorch_bundle_predicts_the_same_on_both_emulated_pis_without_torch(tmp_path,
                                                                                   available):
    # predict.py builds ExecuTorch's C++ runner with the root filesystem's g++ and runs the int8
    # program through it; the site holds no torch
    from edgelab import edge, paths
    from edgelab.pi import rootfs

    root = paths.pi_rootfs(rootfs.SUITE)
    site = root / rootfs.SITES["executorch"]
    assert (site / "executorch").is_dir() and not list(site.glob("torch*"))
    shutil.rmtree(root / "root/.cache/edgelab-pi", ignore_errors=True)   # built here, not reused
    files = edge.export(tiny_cnn(1), tmp_path / "m", "executorch", torch.zeros(2, 1, 28, 28),
                        calibration=torch.randn(16, 1, 28, 28), batches=(1,))
    et = pib.build(files[1], tmp_path / "pi_bundle", name="tiny-executorch")
    results = emulate.verify_pis(et, images=8)
    assert [("building ExecuTorch's runner" in r["stderr"]) for r in results.values()] == \
        [True, False]   # built once, by the first core's run, then reused
    for cpu, res in results.items():
        assert res["runtime"] == "executorch" and res["cpu"]["qemu_cpu"] == cpu
        assert res["machine"] == "aarch64"
        assert res["match"] and res["max_abs_logit_diff"] < 1e-4, res


@pytest.mark.heavy
def test_the_executorch_runner_is_built_ahead_once_on_both_sides(available):
    import os
    from pathlib import Path

    from edgelab import paths
    from edgelab.pi import rootfs

    # predict.py's cache on each side (XDG_CACHE_HOME would move the root filesystem's too)
    host = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgelab-pi"
    shutil.rmtree(host, ignore_errors=True)
    shutil.rmtree(paths.pi_rootfs(rootfs.SUITE) / "root/.cache/edgelab-pi", ignore_errors=True)
    first, second = emulate.build_executorch_runner(), emulate.build_executorch_runner()
    assert first["x86"]["built"] and first["arm64"]["built"]
    assert not second["x86"]["built"] and not second["arm64"]["built"]
    assert len(list(host.glob("et_runner-*"))) == 1
