#!/usr/bin/env python3
"""Run the shell blocks of a Markdown document as a test, and check the output it shows.

    hack/docs_runner.py docs/tutorial.md            run it (and first compare it with its translations)
    hack/docs_runner.py --check docs/tutorial.md    only parse and compare: no command runs
    hack/docs_runner.py -v docs/tutorial.md         print every block's output as it runs

Markers: the words after a fence's language (GitHub highlights by the first word and shows none
of the others).

    ```sh run                  run this block; it must exit 0
    ```sh run exit=1           ... it must exit 1 (one failing command per such block)
    ```sh run timeout=300      ... within 300 s (default 120)
    ```sh cleanup              run at the end, after a failure too: deletes what the document made
    ```text output             the output of the run block just before it (stdout and stderr)
    ```yaml file=PATH          must equal PATH (the repository's file), comments and blank lines aside
    ```rust from=PATH          an excerpt: its lines appear in PATH in this order (blank lines and
                               lines starting `...`, `// ...` or `# ...` aside), each whole but for indentation

An output block matches the output line by line, with runs of spaces and tabs counted as one
space, blank lines ignored, `...` inside a line matching any text, and a line of `...` alone
matching any number of lines (none included). Nothing else is special.

All blocks run in order in one bash session started in the repository root, so variables, `cd`
and background processes carry over. Inside a run block the first failing command ends the block
(as `set -e` would, without ending the session); a cleanup block runs every command. Blocks
read no stdin; they must not `exit`.

A translation (docs/tutorial.ko.md next to docs/tutorial.md) must run the same commands and
show the same output blocks, byte for byte: the runner compares them before running anything.

When the run ends, on failure too, the cleanup blocks run, then anything still alive in the
session's process group (which the runner created) is stopped: TERM, then KILL after 10 s.
Python 3 standard library only.
"""

import argparse
import difflib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 120
# After a block's timeout the session is asked to end the block and what the block started gets
# TERM; KILL after GRACE seconds; the session is stopped if it still has not answered 5 s later.
GRACE = 15
FENCE = re.compile(r"^(`{3,}|~{3,})\s*(.*)$")
KNOWN_WORDS = {"run", "cleanup", "output"}
KNOWN_KEYS = {"exit", "timeout", "file", "from"}


class DocError(Exception):
    """The document itself is malformed (not a failing command)."""


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    words: set
    attrs: dict
    text: str
    expected: "Block | None" = None

    @property
    def kind(self):
        for kind in ("run", "cleanup", "output"):
            if kind in self.words:
                return kind
        return None

    @property
    def where(self):
        return f"{rel(self.path)}:{self.line}"

    def summary(self):
        first = next((l.strip() for l in self.text.splitlines() if l.strip()), "")
        return first if len(first) <= 70 else first[:67] + "..."


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def parse(path):
    """Every fenced block of the document, with its markers checked."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i
        body, i = [], i + 1
        while i < len(lines) and not (
            lines[i].startswith(fence[0] * len(fence)) and lines[i].strip(fence[0]).strip() == ""
        ):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise DocError(f"{rel(path)}:{start + 1}: code block never closed")
        i += 1
        parts = info.split()
        lang, words, attrs = (parts[0] if parts else ""), set(), {}
        for word in parts[1:]:
            key, eq, value = word.partition("=")
            if eq and key in KNOWN_KEYS:
                attrs[key] = value
            elif not eq and word in KNOWN_WORDS:
                words.add(word)
            else:
                raise DocError(f"{rel(path)}:{start + 1}: unknown marker {word!r} in {info!r}")
        block = Block(Path(path), start + 1, lang, words, attrs, "\n".join(body) + "\n")
        if len(words) > 1:
            raise DocError(f"{block.where}: one of run, cleanup, output per block, not {sorted(words)}")
        if block.kind in ("run", "cleanup") and lang not in ("sh", "bash", "shell"):
            raise DocError(f"{block.where}: a {block.kind} block must be sh or bash, not {lang!r}")
        for key, value in attrs.items():
            if key in ("exit", "timeout") and not value.isdigit():
                raise DocError(f"{block.where}: {key}= wants a number, not {value!r}")
            if key in ("exit", "timeout") and block.kind != "run":
                raise DocError(f"{block.where}: {key}= belongs on a run block")
        if block.kind == "output":
            before = blocks[-1] if blocks else None
            if before is None or before.kind not in ("run", "cleanup") or before.expected:
                raise DocError(f"{block.where}: an output block must come right after a run block")
            before.expected = block
        blocks.append(block)
    return blocks


def translations(path):
    """docs/x.md -> [docs/x.ko.md, ...]; docs/x.ko.md -> [docs/x.md]."""
    path = Path(path)
    stem = path.name[: -len(".md")]
    base, dot, lang = stem.rpartition(".")
    if dot and re.fullmatch(r"[a-z]{2}(-[A-Za-z]{2,4})?", lang):
        original = path.with_name(base + ".md")
        return [original] if original.exists() else []
    return sorted(p for p in path.parent.glob(stem + ".*.md") if p != path)


def checked_sequence(blocks):
    """What a translation must repeat exactly: the run, cleanup and output blocks, in order."""
    return [b for b in blocks if b.kind]


def render(blocks):
    out = []
    for b in checked_sequence(blocks):
        marks = " ".join(sorted(b.words) + [f"{k}={v}" for k, v in sorted(b.attrs.items())])
        out.append(f"```{b.lang} {marks}")
        out.extend(b.text.splitlines())
        out.append("```")
    return out


def same_block(a, b):
    return (a.lang, a.words, a.attrs, a.text) == (b.lang, b.words, b.attrs, b.text)


def compare(path, blocks):
    """Fail with a diff if a translation runs other commands or shows other output."""
    problems = []
    for other in translations(path):
        theirs = parse(other)
        ours_seq, their_seq = checked_sequence(blocks), checked_sequence(theirs)
        if len(ours_seq) == len(their_seq) and all(map(same_block, ours_seq, their_seq)):
            continue
        differing = [(a, b) for a, b in zip(ours_seq, their_seq) if not same_block(a, b)]
        if differing:
            where = f"first difference: {differing[0][0].where} vs {differing[0][1].where}"
        else:
            where = f"{len(ours_seq)} vs {len(their_seq)} checked blocks"
        diff = difflib.unified_diff(render(blocks), render(theirs), rel(path), rel(other), lineterm="", n=2)
        problems.append(
            f"{rel(path)} and {rel(other)} do not run the same commands ({where}):\n" + "\n".join(diff)
        )
    return problems


def strip_comments(text):
    kept = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        line = re.sub(r"\s+#.*$", "", line).rstrip()
        if line:
            kept.append(line)
    return kept


ELISION = re.compile(r"^((//|#)\s*)?\.\.\.(\s.*)?$")


def check_excerpt(b):
    target = ROOT / b.attrs["from"]
    if not target.exists():
        return f"{b.where}: from={b.attrs['from']} does not exist"
    source = [l.strip() for l in target.read_text(encoding="utf-8").splitlines()]
    at = 0
    for line in b.text.splitlines():
        line = line.strip()
        if not line or ELISION.match(line):
            continue
        try:
            at = source.index(line, at) + 1
        except ValueError:
            return f"{b.where}: this line is not in {b.attrs['from']} (after the lines before it):\n    {line}"
    return None


def check_files(blocks):
    problems = []
    for b in blocks:
        if "from" in b.attrs:
            problem = check_excerpt(b)
            if problem:
                problems.append(problem)
        if "file" not in b.attrs:
            continue
        target = ROOT / b.attrs["file"]
        if not target.exists():
            problems.append(f"{b.where}: file={b.attrs['file']} does not exist")
            continue
        shown, actual = strip_comments(b.text), strip_comments(target.read_text(encoding="utf-8"))
        if shown != actual:
            diff = difflib.unified_diff(actual, shown, b.attrs["file"], b.where, lineterm="", n=1)
            problems.append(f"{b.where}: differs from {b.attrs['file']} (comments aside):\n" + "\n".join(diff))
    return problems


# ---------------------------------------------------------------- matching


def norm(line):
    return " ".join(line.split())


def line_regex(pattern):
    return re.compile(".*".join(re.escape(part) for part in pattern.split("...")), re.S)


def matches(expected_text, actual_text):
    expected = [norm(l) for l in expected_text.splitlines() if norm(l)]
    actual = [norm(l) for l in actual_text.splitlines() if norm(l)]
    regexes = [None if e == "..." else line_regex(e) for e in expected]
    # done[i][j]: expected[i:] matches actual[j:]; filled from the ends.
    n, m = len(expected), len(actual)
    done = [[False] * (m + 1) for _ in range(n + 1)]
    done[n][m] = True
    for i in range(n - 1, -1, -1):
        for j in range(m, -1, -1):
            if regexes[i] is None:
                done[i][j] = done[i + 1][j] or (j < m and done[i][j + 1])
            else:
                done[i][j] = j < m and done[i + 1][j + 1] and regexes[i].fullmatch(actual[j]) is not None
    return done[0][0]


# ---------------------------------------------------------------- the session

PRELUDE = r"""
__docs_block=
__docs_errexit=1
trap '[ -n "$__docs_block" ] && [ "$__docs_errexit" = 1 ] && [ "${BASH_SOURCE[0]:-}" = "$__docs_block" ] && return' ERR
trap '[ -n "$__docs_block" ] && [ "${BASH_SOURCE[0]:-}" = "$__docs_block" ] && echo "docs_runner: timed out" && return 124' USR1
"""


def processes_in_group(pgid):
    """Every live process in process group pgid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        if rest[0] != "Z" and int(rest[2]) == pgid:
            found.append(int(entry))
    return found


class Session:
    def __init__(self, workdir, verbose, state_file=None):
        self.workdir, self.verbose = workdir, verbose
        self.state = Path(workdir) / "state.sh"
        env = dict(os.environ, TERM="dumb", PAGER="cat", AWS_PAGER="")
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.count = 0
        self._send(PRELUDE)
        if state_file and Path(state_file).exists():
            # A session that replaced one stopped for hanging: the variables and directory the
            # last block left (read-only ones cannot be set again; that is fine).
            self._send(f"source {sh_quote(str(state_file))} >/dev/null 2>&1; cd -- \"$__docs_pwd\" 2>/dev/null\n")

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.put(raw.decode("utf-8", errors="replace"))
        self.lines.put(None)

    def _send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, block, timeout):
        """Run one block: (exit status or None if the session had to be stopped, output)."""
        self.count += 1
        script = Path(self.workdir) / f"block-{self.count:03d}.sh"
        script.write_text(block.text, encoding="utf-8")
        token = f"\x1edocs-runner-done-{self.count}-{os.getpid()}"
        errexit = 1 if block.kind == "run" else 0
        before = set(processes_in_group(self.proc.pid))
        self._send(
            f"__docs_errexit={errexit}; __docs_block={sh_quote(str(script))}; "
            f'source "$__docs_block" </dev/null; __docs_rc=$?; __docs_block=; '
            f"{{ declare -p; echo \"__docs_pwd=$(printf %q \"$PWD\")\"; }} >{sh_quote(str(self.state))} 2>/dev/null; "
            f"printf '%s %s\\n' {sh_quote(token)} \"$__docs_rc\"\n"
        )
        deadline, stage = time.monotonic() + timeout, 0
        out = []
        while True:
            try:
                line = self.lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                # Out of time: ask bash to end the block and TERM what the block started; then
                # KILL those; then give up on the session.
                stage += 1
                if stage <= 2:
                    self.interrupt(before, signal.SIGTERM if stage == 1 else signal.SIGKILL)
                    deadline = time.monotonic() + (GRACE if stage == 1 else 5)
                    continue
                return None, "".join(out) + f"\ndocs_runner: the block did not stop after its timeout\n"
            if line is None:
                return None, "".join(out) + "\ndocs_runner: the bash session ended (did the block exit?)\n"
            if token in line:
                # The block's last line may lack its newline: the token then ends that line.
                before, _, after = line.partition(token)
                out.append(before)
                if before and self.verbose:
                    sys.stdout.write("      | " + before + "\n")
                return (124 if stage else int(after.split()[0])), "".join(out)
            if self.verbose:
                sys.stdout.write("      | " + line)
                sys.stdout.flush()
            out.append(line)

    def interrupt(self, before, sig):
        """A block ran out of time: end it, and signal what it started (not what earlier blocks
        left running in the background, such as an operator: those were in `before`)."""
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return
        for pid in processes_in_group(self.proc.pid):
            if pid != self.proc.pid and pid not in before:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def close(self):
        """End the session, then anything it left behind in its process group."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        left = processes_in_group(self.proc.pid)
        if left:
            names = ", ".join(f"{pid} ({cmdline(pid)})" for pid in left)
            print(f"docs_runner: still running after the cleanup blocks, stopping: {names}", file=sys.stderr)
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(100):
                if not processes_in_group(self.proc.pid):
                    break
                time.sleep(0.1)
            else:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return left


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"


def sh_quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


def indent(text, prefix="      | "):
    return "".join(prefix + l + "\n" for l in text.rstrip("\n").splitlines()) or prefix + "(no output)\n"


# ---------------------------------------------------------------- main


def run_document(path, verbose):
    blocks = parse(path)
    runs = [b for b in blocks if b.kind == "run"]
    cleanups = [b for b in blocks if b.kind == "cleanup"]
    print(f"docs_runner: {rel(path)}: {len(runs)} blocks to run, {len(cleanups)} cleanup", flush=True)
    began = time.monotonic()
    failure = None
    with tempfile.TemporaryDirectory(prefix="docs-runner-") as workdir:
        session = Session(workdir, verbose)
        try:
            for n, block in enumerate(runs, 1):
                failure = run_one(session, block, f"{n:>3}")
                if failure:
                    if session.proc.poll() is not None or failure.get("stopped"):
                        # The session hung or died: a fresh one, with the variables the last
                        # finished block left, runs the cleanup.
                        session.close()
                        session = Session(workdir, verbose, state_file=session.state)
                    break
        finally:
            print("docs_runner: cleanup" + (" (after a failure)" if failure else ""), flush=True)
            cleanup_failed = []
            for block in cleanups:
                problem = run_one(session, block, "  c")
                if problem:
                    cleanup_failed.append(problem)
            left = session.close()
    elapsed = time.monotonic() - began
    if failure:
        report(failure)
        for problem in cleanup_failed:
            report(problem)
        print(f"docs_runner: {rel(path)}: FAILED at {failure['block'].where} after {elapsed:.1f}s", flush=True)
        return False
    if cleanup_failed or left:
        for problem in cleanup_failed:
            report(problem)
        if left:
            print("docs_runner: the cleanup blocks left processes running (stopped above)", flush=True)
        print(f"docs_runner: {rel(path)}: FAILED in cleanup after {elapsed:.1f}s", flush=True)
        return False
    print(f"docs_runner: {rel(path)}: passed, {len(runs)} blocks in {elapsed:.1f}s", flush=True)
    return True


def run_one(session, block, label):
    timeout = int(block.attrs.get("timeout", DEFAULT_TIMEOUT))
    want_rc = int(block.attrs.get("exit", 0))
    t0 = time.monotonic()
    rc, output = session.run(block, timeout)
    took = time.monotonic() - t0
    problem = None
    if rc is None:
        problem = {"block": block, "why": f"timed out after {timeout}s, and the session hung", "output": output, "stopped": True}
    elif rc == 124 and want_rc != 124 and took >= timeout:
        problem = {"block": block, "why": f"timed out after {timeout}s", "output": output}
    elif block.kind == "run" and rc != want_rc:
        problem = {"block": block, "why": f"exit status {rc}, expected {want_rc}", "output": output}
    elif block.kind == "cleanup" and rc != 0:
        problem = {"block": block, "why": f"exit status {rc}", "output": output}
    elif block.expected and not matches(block.expected.text, output):
        problem = {"block": block, "why": f"output does not match {block.expected.where}", "output": output}
    status = "ok" if not problem else "FAIL"
    print(f"  {label}  {block.where:<26} {took:6.1f}s  {status:<4}  {block.summary()}", flush=True)
    return problem


def report(problem):
    block = problem["block"]
    print(f"\n--- {block.where}: {problem['why']}", flush=True)
    print("    the block:")
    print(indent(block.text), end="")
    print("    its output:")
    print(indent(problem["output"]), end="")
    if block.expected:
        print(f"    the output the document shows ({block.expected.where}; `...` matches anything):")
        print(indent(block.expected.text), end="")
    print(flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("documents", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only parse and compare, run nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each block's output as it runs")
    args = parser.parse_args()
    ok = True
    for path in args.documents:
        try:
            blocks = parse(path)
            problems = compare(path, blocks) + check_files(blocks)
        except (DocError, OSError) as err:
            print(f"docs_runner: {err}", file=sys.stderr)
            return 2
        if problems:
            for problem in problems:
                print(f"docs_runner: {problem}", file=sys.stderr)
            return 1
        if args.check:
            print(f"docs_runner: {rel(path)}: {len(checked_sequence(blocks))} checked blocks, translations agree")
            continue
        ok = run_document(path, args.verbose) and ok
        if not ok:
            break
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
