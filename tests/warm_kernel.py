"""A warm Jupyter kernel for the notebook tests: the imports every notebook pays for, paid once per test worker.

A fresh `python3` kernel spends about 3 s of CPU before a notebook's first cell runs — starting the interpreter and
importing PyTorch, pandas and ipykernel — and the suite starts one per notebook. Here one server process per test
worker imports those modules once (`PRELOAD`: modules whose import reads nothing a notebook sets, unlike
`arc_geometry`, whose kernels read `TRITON_INTERPRET` when they are defined), and each kernel is a `fork()` of it,
so every notebook still gets a process of its own (its own globals, working directory, environment and kernel
connection), as with a fresh kernel.

Jupyter starts the kernel as `python warm_kernel.py client SOCKET -f CONNECTION_FILE` (the kernel spec that
`kernel_spec` writes). The client hands the server its argv, environment, working directory and standard streams
(file descriptors over a Unix socket), forwards the signals Jupyter sends it (interrupt, terminate) to the forked
kernel, and exits with the kernel's exit status; if the client is killed, the server kills its kernel.

    python warm_kernel.py serve SOCKET       # the server: preloads, then forks a kernel per connection
    python warm_kernel.py client SOCKET ARGS # what the kernel spec runs

Standard library only at module level: the client starts in milliseconds.
"""
import json
import os
import select
import signal
import socket
import sys
from pathlib import Path

PRELOAD = ("torch", "numpy", "pandas", "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel", "nbdev.showdoc",
           "fastcore.test")
NAME = "arc-geometry-warm"


def kernel_spec(root: Path, sock: str) -> Path:
    "Write the kernel spec `NAME` under `root`/kernels (a directory to put on `JUPYTER_PATH`); return `root`."
    d = root / "kernels" / NAME
    d.mkdir(parents=True, exist_ok=True)
    (d / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(Path(__file__).resolve()), "client", sock, "-f", "{connection_file}"],
        "display_name": "Python 3 (warm fork)", "language": "python", "interrupt_mode": "signal"}))
    return root


def _run_kernel(req: dict, fds: list) -> None:
    "In the forked child: become a fresh ipykernel with the client's streams, environment, directory and argv."
    code = 1
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        sys.argv = req["argv"]
        from ipykernel.kernelapp import IPKernelApp
        IPKernelApp.launch_instance(argv=req["argv"][1:])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        import atexit
        atexit._run_exitfuncs()              # what a normal interpreter exit runs (multiprocessing's clean-up, …)
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        os._exit(code)                       # never back into the server's frames


def serve(path: str) -> None:
    "Preload `PRELOAD`, listen on the Unix socket `path`, fork a kernel per connection; exit when the parent does."
    for m in PRELOAD:
        __import__(m)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path + ".tmp")
    srv.listen(16)
    os.rename(path + ".tmp", path)           # the socket appears only once the server accepts connections
    parent, kids, orphans = os.getppid(), {}, set()   # kernel pid -> client connection; kernels whose client died
    try:
        while os.getppid() == parent:
            ready, _, _ = select.select([srv, *kids.values()], [], [], 0.2)
            for s in ready:
                if s is srv:
                    conn, _ = srv.accept()
                    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                    sys.stdout.flush(); sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        srv.close(); conn.close()
                        for c in kids.values():
                            c.close()
                        _run_kernel(json.loads(msg), fds)
                    for fd in fds:
                        os.close(fd)
                    conn.send(str(pid).encode())
                    kids[pid] = conn
                else:                        # a client's end closed while its kernel runs: the client was killed
                    pid = next(p for p, c in kids.items() if c is s)
                    kids.pop(pid).close()
                    orphans.add(pid)
                    os.kill(pid, signal.SIGKILL)
            while True:                      # reap finished kernels; tell their clients the exit status
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                orphans.discard(pid)
                if (c := kids.pop(pid, None)) is not None:
                    try:
                        c.send(str(os.waitstatus_to_exitcode(status)).encode())
                    except OSError:
                        pass
                    c.close()
    finally:
        for pid in [*kids, *orphans]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        Path(path).unlink(missing_ok=True)


def client(path: str, argv: list) -> int:
    "Ask the server at `path` for a kernel running `argv`; forward signals to it; return its exit status."
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    req = dict(argv=[sys.argv[0], *argv], env=dict(os.environ), cwd=os.getcwd())
    socket.send_fds(s, [json.dumps(req).encode()], [0, 1, 2])
    pid = int(s.recv(64))
    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:           # the kernel has just exited: its status is on the way
            pass
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    status = s.recv(64)
    return int(status) if status else 1


if __name__ == "__main__":
    cmd, sock, *rest = sys.argv[1:]
    if cmd == "serve":
        serve(sock)
    else:
        code = client(sock, rest)
        sys.exit(code if code >= 0 else 128 - code)
