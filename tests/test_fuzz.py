"""Thousands of mutated and truncated model files through tinymp.Model, and through planning,
training, saving and loading mutated parameter files, and editing a model's bytes under a live
trainer, in a build of the engine with AddressSanitizer and UndefinedBehaviorSanitizer: only
ValueError, never a crash, an out-of-bounds read or undefined behaviour."""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
SAN = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g"


def libasan():
    out = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory):
    if shutil.which("gcc") is None or libasan() is None:
        pytest.skip("gcc with libasan is needed for the sanitizer build")
    out = tmp_path_factory.mktemp("asan")
    pkg = out / "tinymp"
    shutil.copytree(os.path.join(ROOT, "host", "tinymp"), pkg,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = dict(os.environ, TINYMP_CFLAGS=SAN, TINYMP_LDFLAGS="-fsanitize=address,undefined")
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(out),
                        "--build-temp", str(out / "tmp"), "--force"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    # the fuzz run means something only if the engine really is instrumented
    so = next((pkg).glob("_tinymp*.so"))
    syms = subprocess.run(["nm", "-D", str(so)], capture_output=True, text=True).stdout
    assert "__asan_report" in syms and "__ubsan_handle" in syms, "sanitizers missing from the build"
    return str(out)


def seed_files(tmp_path):
    sys.path.insert(0, HERE)
    import numpy as np
    import kernel_models as km
    from tinymp import zoo
    rng = np.random.default_rng(7)
    seeds = {
        "demo": zoo.demo(),
        "conv": km.conv_like(rng, "conv", 6, 7, 3, 4, 3, (2, 1), (1, 1, 1, 1))[0],
        "dw": km.conv_like(rng, "dwconv", 8, 8, 5, 5, 3, (1, 1), (1, 1, 1, 1), prefix_pw=True)[0],
        "add": km.add_model(rng, 4, 4, 3, True)[0],
    }
    paths = []
    for name, data in seeds.items():
        p = tmp_path / f"{name}.tmpm"
        p.write_bytes(data)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_models_under_sanitizers(asan_build, tmp_path, seed):
    env = dict(os.environ, PYTHONPATH=asan_build, LD_PRELOAD=libasan(),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    r = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_driver.py"), str(seed), "5000",
                        *seed_files(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    print(r.stdout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    loaded = int(r.stdout.split(" rejected with ValueError, ")[1].split()[0])
    assert loaded > 100, "too few mutants got past validation to exercise inference"
    trained = int(r.stdout.split("; ")[-1].split()[0])
    assert trained > 50, "too few mutants reached the trainer"
