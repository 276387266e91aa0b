"""The speed evidence of docs/training.md and BENCHMARKS.md in one resumable run on a GPU machine.

    python tools/gpu_speed_suite.py OUT [--original PATH] [--budget 510] [--stages ...]
                                        [--previous RESULTS.tar.gz] [--export DIR]

Stages, each its own process with its log (OUT/<stage>.log) and results (OUT/<stage>.json);
a stage that finished is not run again, so a second call continues where the first stopped:

- `env`: GPU, driver, torch, triton, torchvision versions;
- `build-original`: copies the original checkout (--original) to OUT/original and builds its two
  CUDA extensions in place for this GPU (its own setup.py with -arch=sm_90 instead of sm_70), in
  the background while the next stages run;
- `kernel-tests`: the tests of what the speed work changed, on the GPU (AVA_TEST_DEVICE=cuda,
  compiled Triton): the raymarcher's lists and scan, the one-launch scrub, the CUDA graphs;
- `raymarch`: tools/bench_raymarch.py --original (head and mesh scenes, decoder and random order,
  forward and forward+backward, culling and list lengths; the first kernels' scan (block 1) and
  trilinear form (corners at once) against the defaults);
- `train-step`: tools/bench_train_step.py --original (eager and graph steps of `ava train`'s
  defaults against the original, opaque state) with the 50-step equality check;
- `view`: tools/bench_view.py (ava256 random model, 512x334 and 1024x667).

Stages that cannot run here (no CUDA, no original) are marked skipped and tried again next time.
`--budget` is the wall time this call may take: a stage starts only if its usual duration fits
in what is left, and is stopped at the budget's end (then it reruns next call). The summary
table comes last. `--export DIR` packs OUT (results, logs, the built original's libraries) into
DIR/speed-results.tar.gz and writes DIR/summary.txt; `--previous` unpacks such an archive into
OUT first, which is how a second call on a fresh machine resumes.

`--cpu-check` runs the stages that can on a CPU at tiny sizes (a check of the scripts, not a
measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Usual durations on an H100 (seconds), to decide whether a stage fits the time left.
EXPECTED = {"env": 5, "build-original": 150, "kernel-tests": 100, "raymarch": 110, "train-step": 180, "view": 60}
# In order of importance: what a call has no time left for runs first in the next one.
STAGES = ("env", "build-original", "kernel-tests", "raymarch", "train-step", "view")
QUICK_TESTS = ["tests/test_kernels_raymarch.py", "tests/test_cuda_graphs.py", "tests/test_train_step.py"]
# What this code changed, on the GPU: the lists' overflow fallback, the capacity, the scan block,
# the trilinear forms, no host reads, no dropped primitive, grazing rays, the one-launch scrub and
# the CUDA graphs. The hypothesis tests compile the kernels for every random template size
# (minutes on a GPU) and run on the CPU in CI with the rest.
TEST_SELECTION = ("cuda_graphs or overflow or capacity or scan_block or corners or never_read or zero_nonfinite "
                  "or more_than_512 or grazing")


class Suite:
    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget
        self.cuda = self._cuda_available()
        self.build: subprocess.Popen | None = None

    # --- bookkeeping ------------------------------------------------------------------------------

    @staticmethod
    def _cuda_available() -> bool:
        try:
            import torch

            return torch.cuda.is_available()
        except ImportError:
            return False

    def status(self, stage: str) -> dict:
        path = self.out / f"{stage}.status.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def mark(self, stage: str, state: str, **extra) -> None:
        record = {"stage": stage, "state": state, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
        (self.out / f"{stage}.status.json").write_text(json.dumps(record, indent=1))
        print(f"[suite] {stage}: {state} {extra.get('note', '')}".rstrip(), flush=True)

    def done(self, stage: str) -> bool:
        return self.status(stage).get("state") in ("done", "failed")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, stage: str, command: list[str], env: dict | None = None, cwd: Path = ROOT) -> int | None:
        """Runs a stage's command with its output in OUT/<stage>.log; None if stopped at the budget."""
        log = self.out / f"{stage}.log"
        started = time.monotonic()
        print(f"[suite] {stage}: {' '.join(command)}", flush=True)
        with open(log, "w") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
            try:
                code = process.wait(timeout=max(1.0, self.left()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
        seconds = round(time.monotonic() - started, 1)
        if code is None:
            self.mark(stage, "stopped", seconds=seconds, note=f"at the budget after {seconds} s; reruns next call")
        else:
            self.mark(stage, "done" if code == 0 else "failed", seconds=seconds, returncode=code,
                      note=f"in {seconds} s" + ("" if code == 0 else f", exit status {code} (see {log.name})"))
        return code

    def fits(self, stage: str) -> bool:
        if self.left() < EXPECTED[stage] * (0.3 if self.args.cpu_check else 1.0):
            self.mark(stage, "deferred", note=f"{self.left():.0f} s left, usually takes {EXPECTED[stage]} s")
            return False
        return True

    # --- stages -----------------------------------------------------------------------------------

    def env(self) -> None:
        script = ("import json, torch, triton; import importlib.util as u;"
                  "tv = __import__('torchvision').__version__ if u.find_spec('torchvision') else None;"
                  "print(json.dumps({'torch': torch.__version__, 'triton': triton.__version__, 'torchvision': tv,"
                  "'cuda': torch.cuda.is_available(), 'gpu': torch.cuda.get_device_name() if torch.cuda.is_available()"
                  " else None, 'python': __import__('sys').version.split()[0]}))")
        code = self.run("env", [sys.executable, "-c", script])
        if code == 0:
            text = (self.out / "env.log").read_text().strip().splitlines()[-1]
            (self.out / "env.json").write_text(text)
        if shutil.which("nvidia-smi"):
            with open(self.out / "env.log", "a") as handle:
                subprocess.run(["nvidia-smi"], stdout=handle, stderr=subprocess.STDOUT)

    def original_path(self) -> Path:
        return self.out / "original"

    def original_built(self) -> bool:
        root = self.original_path()
        return all(list((root / folder).glob(f"{library}*.so")) for folder, library in
                   (("extensions/mvpraymarch", "mvpraymarchlib"), ("extensions/utils", "utilslib")))

    def start_build(self) -> None:
        """Copies the original and starts building its extensions in the background."""
        if self.original_built():
            self.mark("build-original", "done", note="(libraries already built)")
            return
        if not self.args.original:
            self.mark("build-original", "skipped", note="no --original")
            return
        if not (self.cuda and shutil.which("nvcc")):
            self.mark("build-original", "skipped", note="no CUDA compiler here")
            return
        target = self.original_path()
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(self.args.original).expanduser(), target,
                        ignore=shutil.ignore_patterns("build", "*.so", "__pycache__"))
        for folder in ("extensions/mvpraymarch", "extensions/utils"):
            setup = target / folder / "setup.py"
            # CUDA 13 no longer builds the sm_70 the original names; build for this GPU (Hopper).
            setup.write_text(re.sub(r"-arch=sm_\d+", f"-arch={self.args.arch}", setup.read_text()))
        # setup.py finds extensions/include from its own path, so it is called by its absolute
        # path from inside its folder (its sources are named relative to that folder).
        command = " && ".join(f"cd {target}/{folder} && {sys.executable} {target}/{folder}/setup.py build_ext --inplace"
                              for folder in ("extensions/mvpraymarch", "extensions/utils"))
        log = open(self.out / "build-original.log", "w")
        env = {**os.environ, "MAX_JOBS": "8", "TORCH_CUDA_ARCH_LIST": "9.0"}
        self.build = subprocess.Popen(["bash", "-c", command], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.build_started = time.monotonic()
        self.mark("build-original", "running", note="in the background")

    def wait_build(self) -> bool:
        """Whether the original's libraries are there (waits for a running build, within the budget)."""
        if self.build is not None:
            try:
                code = self.build.wait(timeout=max(1.0, self.left()))
            except subprocess.TimeoutExpired:
                self.build.kill()
                self.mark("build-original", "stopped", note="at the budget")
                self.build = None
                return False
            seconds = round(time.monotonic() - self.build_started, 1)
            self.build = None
            ok = code == 0 and self.original_built()
            self.mark("build-original", "done" if ok else "failed", seconds=seconds, returncode=code,
                      note=f"in {seconds} s" + ("" if ok else " (see build-original.log)"))
        return self.original_built()

    def kernel_tests(self) -> None:
        if not self.cuda:
            self.mark("kernel-tests", "skipped", note="no CUDA here (CI runs them on the CPU)")
            return
        if not self.fits("kernel-tests"):
            return
        env = {"AVA_TEST_DEVICE": "cuda", "TRITON_INTERPRET": "0"}
        self.run("kernel-tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *QUICK_TESTS,
                                  "-k", TEST_SELECTION, f"--junitxml={self.out / 'kernel-tests.xml'}"], env=env)

    def view(self) -> None:
        if not self.cuda and not self.args.cpu_check:
            self.mark("view", "skipped", note="no CUDA here")
            return
        if not self.fits("view"):
            return
        extra = ["--frames", "20"] if self.cuda else ["--model", "tiny", "--device", "cpu", "--sizes", "24x16",
                                                     "--frames", "3"]
        self.run("view", [sys.executable, "tools/bench_view.py", *extra, "--json", str(self.out / "view.json")])

    def raymarch(self) -> None:
        if not self.cuda:
            self.mark("raymarch", "skipped", note="no CUDA here")
            return
        original = ["--original", str(self.original_path())] if self.wait_build() else []
        if not original:
            self.mark("raymarch", "skipped", note="the original is not built; reruns next call")
            return
        if not self.fits("raymarch"):
            return
        self.run("raymarch", [sys.executable, "tools/bench_raymarch.py", *original, "--reps", "15", "--no-vectorised",
                              "--scan-blocks", "1", "--corners", "--json", str(self.out / "raymarch.json")])

    def train_step(self) -> None:
        if self.cuda:
            original = ["--original", str(self.original_path())] if self.wait_build() else []
            if not original:
                self.mark("train-step", "skipped", note="the original is not built; reruns next call")
                return
            extra = [*original, "--states", "opaque", "--variants", "default+eager,default", "--reps", "10",
                     "--equality-steps", "50"]
        elif self.args.cpu_check:
            extra = ["--size", "tiny", "--device", "cpu", "--states", "opaque", "--variants",
                     "default+eager,default+syncfree", "--reps", "2", "--batches", "2", "--equality-steps", "3"]
        else:
            self.mark("train-step", "skipped", note="no CUDA here")
            return
        if not self.fits("train-step"):
            return
        self.run("train-step", [sys.executable, "tools/bench_train_step.py", *extra, "--json",
                                str(self.out / "train-step.json")])

    # --- summary ----------------------------------------------------------------------------------

    def summary(self) -> str:
        lines = [f"speed suite summary ({self.out})"]
        environment = self._json("env")
        if environment:
            lines.append(f"  {environment.get('gpu')}, torch {environment.get('torch')}, triton "
                         f"{environment.get('triton')}, torchvision {environment.get('torchvision')}")
        for stage in STAGES:
            status = self.status(stage)
            lines.append(f"  {stage:15s} {status.get('state', 'not run'):9s} {status.get('note', '')}")
        lines += self._tests_summary() + self._view_summary() + self._raymarch_summary() + self._train_summary()
        return "\n".join(lines)

    def _json(self, stage: str) -> dict:
        path = self.out / f"{stage}.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def _tests_summary(self) -> list[str]:
        log = self.out / "kernel-tests.log"
        if not log.is_file():
            return []
        last = [line for line in log.read_text().splitlines() if re.search(r"\d+ (passed|failed)", line)]
        return [f"tests on the GPU: {last[-1].strip('= ')}"] if last else []

    def _view_summary(self) -> list[str]:
        rows = self._json("view").get("rows", [])
        lines = [f"view {row['height']}x{row['width']}: decode+raymarch {row['decode_raymarch_ms']:.1f} ms "
                 f"({row['fps']:.0f} fps; op by op {row['decode_raymarch_eager_ms']:.1f} ms), whole frame "
                 f"{row['viewer_frame_ms']:.1f} ms ({row['viewer_fps']:.0f} fps; before {row['viewer_frame_old_ms']:.1f} ms)"
                 for row in rows]
        return lines

    def _raymarch_summary(self) -> list[str]:
        results = self._json("raymarch")
        lines = []
        for key in ("head/decoder", "head/random", "mesh/decoder", "mesh/random"):
            ours, theirs = results.get(f"ava triton ({key})"), results.get(f"original CUDA ({key})")
            if ours and theirs:
                lines.append(f"raymarch {key:13s} fwd {ours['forward_ms']:.2f} vs {theirs['forward_ms']:.2f} ms "
                             f"({ours['forward_ms'] / theirs['forward_ms']:.2f}x), fwd+bwd {ours['forward_backward_ms']:.2f}"
                             f" vs {theirs['forward_backward_ms']:.2f} ms "
                             f"({ours['forward_backward_ms'] / theirs['forward_backward_ms']:.2f}x)")
            stats = results.get(f"{key}_lists")
            if stats:
                lines.append(f"   culling {stats['cull_ms']:.2f} ms, lists mean {stats['mean_list']:.1f} max "
                             f"{stats['max_list']}, fine entries {stats['fine_total']} of {stats['fine_capacity']}")
            for setting, label in (("scan_block", "scan"), ("trilinear_corners_at_once", "corners at once")):
                names = [name for name in results if name.startswith(f"ava triton ({key}, {label} ")]
                if names:
                    cells = ", ".join(f"{name.rsplit(' ', 1)[1].rstrip(')')}: {results[name]['forward_ms']:.2f}/"
                                      f"{results[name]['forward_backward_ms']:.2f}" for name in names)
                    lines.append(f"   {label} -> fwd/fwd+bwd ms: {cells} (largest difference "
                                 f"{results.get(f'{key}_{setting}_max_abs_difference', float('nan')):.1e})")
        return lines

    def _train_summary(self) -> list[str]:
        results = self._json("train-step")
        lines = []
        if results.get("default_tokens"):
            lines.append(f"train step (`ava train` default here: {'+'.join(results['default_tokens'])})")
        theirs = results.get("original opaque")
        for label, result in results.items():
            if not (isinstance(result, dict) and "step_ms" in result):
                continue
            ratio = f", {result['step_ms'] / theirs['step_ms']:.2f}x the original" if theirs and label != "original opaque" else ""
            busy = result["kernel_ms"] / result["step_ms"] if result.get("step_ms") else float("nan")
            lines.append(f"   {label:40s} {result['step_ms']:7.1f} ms{ratio}, busy {busy:.0%}, "
                         f"{result['kernels']:.0f} kernels / {result['host_launches']:.0f} host launches, "
                         f"peak {result['peak_gb']:.1f} GB")
        equality = results.get("equality")
        if equality:
            for label, value in equality.items():
                if isinstance(value, dict):
                    lines.append(f"   {label:36s} loss {value['loss_max_rel']:.1e} weights max {value['weights_max_abs']:.1e}"
                                 f" rel {value['weights_rel_l2']:.1e} bit-equal {value['bit_equal']}")
            if "graph_within_bound" in equality:
                lines.append(f"   graph within twice the eager spread: {equality['graph_within_bound']}")
        return lines

    def export(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        archive = target / "speed-results.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(self.out.iterdir()):
                if path.name == "original":
                    for library in sorted(path.glob("extensions/*/*.so")):
                        tar.add(library, arcname=str(library.relative_to(self.out)))
                elif path.is_file():
                    tar.add(path, arcname=path.name)
        (target / "summary.txt").write_text(self.summary() + "\n")
        print(f"[suite] exported {archive} ({archive.stat().st_size / 2**20:.1f} MiB) and summary.txt", flush=True)


def unpack_previous(archive: Path, out: Path, original: str | None) -> None:
    """Restores an exported archive; the original's libraries go back into a fresh copy of its sources."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        libraries = [member for member in members if member.name.startswith("original/")]
        if libraries and original:
            shutil.copytree(Path(original).expanduser(), out / "original", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("build", "__pycache__"))
        tar.extractall(out, members=[member for member in members
                                     if not member.name.startswith("original/") or original], filter="data")
    print(f"[suite] resumed from {archive}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (results, logs, the built original)")
    parser.add_argument("--original", default=None, help="a checkout of facebookresearch/ava-256 (sources)")
    parser.add_argument("--arch", default="sm_90", help="nvcc -arch for the original's extensions")
    parser.add_argument("--budget", type=float, default=500.0, help="seconds this call may take")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in the usual order")
    parser.add_argument("--previous", type=Path, default=None, help="an exported archive to resume from")
    parser.add_argument("--export", type=Path, default=None, help="pack results and the summary into this folder")
    parser.add_argument("--redo", default="", help="comma-separated stages to run again even if done")
    parser.add_argument("--cpu-check", action="store_true", help="run what can run on a CPU, at tiny sizes")
    args = parser.parse_args(argv)
    if args.previous is not None and args.previous.is_file():
        unpack_previous(args.previous, Path(args.out), args.original)
    suite = Suite(args)
    wanted = [stage for stage in STAGES if stage in args.stages.split(",")]
    for stage in args.redo.split(","):
        (suite.out / f"{stage}.status.json").unlink(missing_ok=True)
    if "build-original" in wanted:
        suite.start_build()  # (again after a failed build: nothing else can use the original)
    for stage in wanted:
        if stage == "build-original" or suite.done(stage):
            continue
        getattr(suite, stage.replace("-", "_"))()
    if suite.build is not None:
        suite.wait_build()
    text = suite.summary()
    if args.export is not None:
        suite.export(args.export)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
