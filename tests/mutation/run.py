"""The mutation pass: applies each mutant in mutants.py alone (every copy of its original text), runs the tests that cover it, reverts, and prints a
table (mutant, killed by which test). A mutant that does not compile is reported as such, not as killed.
Usage: python3 tests/mutation/run.py [mutant-id ...]   (from the repository root; takes ~15 minutes on 2 cores)."""
import json, re, subprocess, sys, time
sys.path.insert(0, "tests/mutation")
from mutants import MUTANTS

def run(project, cls, timeout=300):
    cmd = ["dotnet", "test", project, "-c", "Release", "--", "--filter-class", cls]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The covering tests never finish under this mutant (a kernel deadlocks): it is detected, the hard way.
        import os, signal
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "killed (tests hang: timeout)", []
    class P: pass
    p = P(); p.returncode = proc.returncode
    if re.search(r"error CS\d+", out) or "Build failed" in out:
        return "does not compile", []
    failed = re.findall(r"^failed (\S+)", out, re.M)
    return ("killed" if p.returncode != 0 and failed else ("survived" if p.returncode == 0 else f"exit {p.returncode}")), failed

wanted = set(sys.argv[1:])
rows = []
for mid, path, old, new, project, cls in MUTANTS:
    if wanted and mid not in wanted:
        continue
    src = open(path, encoding="utf-8").read()
    if src.count(old) == 0:
        rows.append((mid, path, "original text not found", [])); continue
    open(path, "w", encoding="utf-8").write(src.replace(old, new))
    t0 = time.time()
    try:
        status, failed = run(project, cls)
    finally:
        open(path, "w", encoding="utf-8").write(src)
    rows.append((mid, path, status, failed))
    print(f"{mid}: {status} ({time.time() - t0:.0f} s) {failed[:2]}", flush=True)

print("\n| mutant | file | result | killed by |\n| --- | --- | --- | --- |")
for mid, path, status, failed in rows:
    names = sorted({f.split("(")[0].split(".")[-1] for f in failed})
    print(f"| {mid} | {path.split('/')[-1]} | {status} | {', '.join(names[:3])}{' …' if len(names) > 3 else ''} |")
killed = sum(1 for r in rows if r[2].startswith("killed"))
print(f"\n{killed} of {len(rows)} mutants killed")
print(json.dumps({"mutants": len(rows), "killed": killed}))
