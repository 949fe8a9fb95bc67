"""Bad inputs, load and faults at scale (issue 15), on a real ComfyUI server and the CLI:

    python benchmarks/robustness.py            # about 5 minutes on 2 cores; needs scripts/setup_host.sh's host

- the whole bad-input matrix (testing/bad_inputs.py), heavy cases included (a 100-Mpx LoadImage);
- load: 50 prompts of mixed sizes queued at once; peak RSS after the last against after the second; temp files;
- faults: a tiled upscale and a Train SR LoRA run interrupted at 20 random moments each (seeded); the next
  prompt, the last good checkpoint, the resume.

Writes benchmarks/results/robustness.json (every case and point) and robustness.md (machine, date, counts).
The tests run the same code with fewer fault points and without the heavy cases.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from timing import machine_info

from onestep_sr.files.atomic import atomic_write
from onestep_sr.testing import comfy_host as host_lib
from onestep_sr.testing import server_stress
from onestep_sr.testing.bad_inputs import Matrix, all_cases

RESULTS = Path(__file__).resolve().parent / "results"
FAULT_POINTS = 20
LOAD_PROMPTS = 50
MAX_RSS_GROWTH = 0.05


def run_matrix(server, work: Path) -> dict:
    matrix = Matrix(server, work)
    outcomes = []
    for case in all_cases(heavy=True):
        started = time.perf_counter()
        outcome = matrix.run(case)
        outcomes.append({**outcome.__dict__, "seconds": round(time.perf_counter() - started, 2), "heavy": case.heavy,
                         "sane": case.sane, "words": list(case.words)})
        print(f"{'ok  ' if outcome.passed else 'FAIL'} [{case.surface}] {case.name}: {outcome.got}", flush=True)
    count = lambda **match: sum(all(o[k] == v for k, v in match.items()) for o in outcomes)
    return {"cases": len(outcomes), "passed": count(passed=True), "failed": count(passed=False),
            "server_cases": count(surface="server"), "cli_cases": count(surface="cli"),
            "refused_as_expected": count(expected="refused", passed=True),
            "succeeded_sanely": count(expected="succeeds", passed=True), "crashed": count(got="crashed"),
            "outcomes": outcomes}


def markdown(report: dict) -> str:
    machine, matrix, load, upscales, trainings = (report[k] for k in ("machine", "matrix", "load", "upscale_faults",
                                                                      "training_faults"))
    failed = [o for o in matrix["outcomes"] if not o["passed"]]
    lines = [
        "# Robustness: bad inputs, load, faults (benchmarks/robustness.py)", "",
        f"- date: {machine['date']}",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, torch "
        f"{machine['versions']['torch']}, Python {machine['python']}; ComfyUI 0.3.75 server on 127.0.0.1 (--cpu)",
        f"- run time: {report['seconds']:.0f} s", "",
        "## Bad-input matrix", "",
        f"{matrix['cases']} distinct cases ({matrix['server_cases']} through the server, {matrix['cli_cases']} through "
        f"the CLI): **{matrix['passed']} as expected**, {matrix['failed']} not; {matrix['refused_as_expected']} refused "
        f"with an error naming the input and the fix, {matrix['succeeded_sanely']} succeeded with a sane result, "
        f"{matrix['crashed']} crashed. After every server case the next prompt succeeded unless listed below; no case "
        "left a partial file.", "",
        "| surface | case | expected | got | s |", "|---|---|---|---|---|",
        *[f"| {o['surface']} | {o['case']} | {o['expected']}{' (' + o['sane'] + ')' if o['sane'] else ''} | "
          f"{o['got']}{'' if o['passed'] else ' — **' + o['problem'] + '**'} | {o['seconds']} |"
          for o in matrix["outcomes"]], "",
        *([f"Not as expected: {', '.join(o['case'] for o in failed)}", ""] if failed else []),
        "## Load", "",
        f"{load['prompts']} prompts of mixed sizes queued at once: {load['completed']} completed; peak RSS of the "
        f"server {load['peak_rss_after_second_mb']:.0f} MB after the second, {load['peak_rss_after_last_mb']:.0f} MB "
        f"after the last ({100 * load['peak_rss_growth']:+.1f} %, bar {100 * MAX_RSS_GROWTH:.0f} %); temporary files "
        f"left: {len(load['stray_files'])}.", "",
        "## Faults", "",
        f"- tiled upscale ({upscales['run_s']} s uninterrupted), interrupts at random moments: {upscales['tries']} "
        f"tries, {upscales['interrupted']} interrupted it (the others came after it finished), "
        f"{upscales['partial_outputs']} saved a partial image, the next prompt succeeded "
        f"{upscales['next_prompt_succeeded']} times of {upscales['tries']}; temporary files left: "
        f"{len(upscales['stray_files'])}.",
        f"- Train SR LoRA ({trainings['steps']} steps, {trainings['run_s']} s), interrupts at random moments: "
        f"{trainings['tries']} tries, {trainings['interrupted']} interrupted it, {trainings['with_checkpoint']} of "
        "those left a readable "
        f"checkpoint, {trainings['resumed_from_checkpoint']} resumed from it to the end (its marked loss history "
        f"carried on), {trainings['lora_written_when_interrupted']} wrote a LoRA while interrupted; the next prompt "
        f"succeeded {trainings['next_prompt_succeeded']} times of {trainings['tries']}; temporary files left: "
        f"{len(trainings['stray_files'])}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(RESULTS / "robustness"), help="results path without suffix")
    parser.add_argument("--points", type=int, default=FAULT_POINTS, help="interrupts per fault kind")
    args = parser.parse_args(argv)
    comfy_dir = host_lib.host_dir()
    if not (comfy_dir / "main.py").is_file():
        sys.exit(f"no ComfyUI host at {comfy_dir}: run bash scripts/setup_host.sh first")
    sys.path.insert(0, str(comfy_dir))  # ComfyUI's graph builder for the prompts
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onestep-sr-robustness-") as work:
        work = Path(work)
        server = server_stress.start_server(comfy_dir, host_lib.prepare_base_dir(work / "matrix"))
        try:
            matrix = run_matrix(server, work / "cli")
        finally:
            server.stop()
        server = server_stress.start_server(comfy_dir, host_lib.prepare_base_dir(work / "stress"))
        try:
            load = server_stress.load(server, LOAD_PROMPTS)
            print(f"load: {load['completed']}/{load['prompts']}, RSS growth {load['peak_rss_growth']:+.3%}", flush=True)
            upscales = server_stress.interrupt_upscales(server, args.points)
            print(f"upscale faults: {upscales['interrupted']} interrupted", flush=True)
            trainings = server_stress.interrupt_trainings(server, args.points)
            print(f"training faults: {trainings['resumed_from_checkpoint']} resumed", flush=True)
        finally:
            server.stop()
    report = {"machine": machine_info(torch.get_num_threads()), "seconds": time.perf_counter() - started,
              "matrix": matrix, "load": load, "upscale_faults": upscales, "training_faults": trainings}
    output = Path(args.output)
    atomic_write(output.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1) + "\n"))
    atomic_write(output.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(report)))
    print(f"wrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")
    good = (matrix["failed"] == 0 and load["completed"] == load["prompts"] and load["peak_rss_growth"] <= MAX_RSS_GROWTH
            and upscales["interrupted"] == args.points and upscales["next_prompt_succeeded"] == upscales["tries"]
            and upscales["partial_outputs"] == 0 and trainings["interrupted"] == args.points
            and trainings["resumed_from_checkpoint"] == trainings["with_checkpoint"] == args.points
            and trainings["next_prompt_succeeded"] == trainings["tries"])
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
