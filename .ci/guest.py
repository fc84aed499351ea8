"""The real-kernel harness: Debian's kernel in a QEMU guest, with real
(emulated) hardware, the project's binaries, and a scenario.

A test describes the guest (QEMU -device options, kernel modules, files to
copy in, a shell script the guest's init runs) and, on the host side, reacts
to the lines the guest prints on its console and drives the hardware through
QMP (send-key, device_add, device_del). One boot per test file: TCG is slow.

    from guest import Guest
    with Guest(devices=["qemu-xhci,id=xhci", "usb-kbd,bus=xhci.0"],
               modules=["usbhid", "xhci-pci"], script=SCRIPT) as g:
        g.wait_for("READY")
        g.send_keys("hello")
        console = g.finish()

Networking, when a test needs it, is QEMU's user-mode network with
restrict=on: the guest reaches nothing, and the host reaches the guest only
through port forwards on 127.0.0.1.

Everything lands in target/guest (the kernel, downloaded once; the
initramfs; the console log of the last run).
"""

import glob
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "guest")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools(extra=()):
    """qemu-system-x86_64, busybox, cpio, xz, and `extra` (package, a file it
    installs) pairs: installed if missing (CI runs as root on a fresh
    machine). A program a guest needs from Debian is installed on the host
    and copied in with its libraries."""
    packages = [pkg for pkg, path in extra if not os.path.exists(path)]
    missing = [t for t in ("qemu-system-x86_64", "cpio", "xz") if shutil.which(t) is None]
    if missing or packages or not os.access("/bin/busybox", os.X_OK):
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
             "qemu-system-x86", "busybox-static", "cpio", "xz-utils", *packages],
            stdout=subprocess.DEVNULL)


def kernel():
    """Debian's kernel and modules, unpacked once: (vmlinuz, modules dir)."""
    os.makedirs(WORK, exist_ok=True)
    unpacked = os.path.join(WORK, "kernel")
    if not glob.glob(os.path.join(unpacked, "boot", "vmlinuz-*")):
        def package():
            out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                                 capture_output=True, text=True).stdout
            m = re.search(r"Depends: (linux-image-[0-9]\S*)", out)
            return m.group(1) if m else None
        name = package()
        if name is None:
            run(["apt-get", "update", "-qq"])
            name = package()
        run(["apt-get", "download", "-qq", name], cwd=WORK)
        deb = glob.glob(os.path.join(WORK, name + "_*.deb"))[0]
        run(["dpkg-deb", "-x", deb, unpacked])
        os.remove(deb)
    vmlinuz = sorted(glob.glob(os.path.join(unpacked, "boot", "vmlinuz-*")))[0]
    modules = sorted(glob.glob(os.path.join(unpacked, "lib", "modules", "*")))[0]
    return vmlinuz, modules


def module_order(modules_dir, names):
    """The .ko files to load for `names`, dependencies first. The kernel
    package ships no modules.dep (depmod makes it at install), so each
    module's own `depends=` field (in its .modinfo) is read. Modules built
    into the kernel (modules.builtin) need nothing."""
    paths = {}
    for path in glob.glob(os.path.join(modules_dir, "kernel", "**", "*.ko*"), recursive=True):
        key = re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(path)).replace("-", "_")
        paths[key] = path
    builtin = set()
    try:
        with open(os.path.join(modules_dir, "modules.builtin")) as f:
            builtin = {re.sub(r"\.ko$", "", os.path.basename(l.strip())).replace("-", "_")
                       for l in f}
    except FileNotFoundError:
        pass

    def depends(path):
        data = read_module(path)
        m = re.search(rb"(?:^|\0)depends=([^\0]*)", data)
        if not m or not m.group(1):
            return []
        return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]

    order = []

    def visit(name):
        key = name.replace("-", "_")
        if key in order or key in builtin:
            return
        if key not in paths:
            raise SystemExit(f"guest: no module {name} in {modules_dir}")
        for d in depends(paths[key]):
            visit(d)
        order.append(key)

    for n in names:
        visit(n)
    return [(k, paths[k]) for k in order]


def read_module(path):
    """A module's bytes, decompressed if it is compressed."""
    if path.endswith(".xz"):
        return subprocess.run(["xz", "-dc", path], capture_output=True, check=True).stdout
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
    with open(path, "rb") as f:
        return f.read()


def copy_with_libraries(binary, root, dest):
    """Copies `binary` to root/dest (stripped) and the shared libraries it
    links."""
    target = os.path.join(root, dest.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    run(["strip", "-o", target, binary])
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.search(r"=> (\S+)", line) or re.search(r"^\s*(/\S+)", line)
        if m and os.path.exists(m.group(1)):
            lib = m.group(1)
            to = os.path.join(root, lib.lstrip("/"))
            os.makedirs(os.path.dirname(to), exist_ok=True)
            shutil.copy(os.path.realpath(lib), to)


PREAMBLE = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin HOME=/tmp
mount -t proc proc /proc; mount -t sysfs sys /sys
mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
mkdir -p /dev/pts; mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "GUEST: insmod $m failed"; done
echo "GUEST: up"
"""

# Runs SCRIPT chrooted into the host's root (Guest(host_root=True)).
CHROOT = """
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288 host /host || echo "GUEST: no host root"
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts; mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /host/dev/pts
# /tmp stays the host's (read-only; a checkout may live there): scratch
# space is /run, and TMPDIR says so.
mount -t tmpfs run /host/run
cp /chrooted.sh /host/run/script.sh
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/run TMPDIR=/run PYTHONDONTWRITEBYTECODE=1 /bin/bash /run/script.sh
"""

EPILOGUE = """
echo "GUEST: done"
poweroff -f
"""


class Guest:
    def __init__(self, devices=(), modules=(), script="", files=None, memory=1024,
                 netdev=None, name="guest", timeout=600, packages=(), append="",
                 host_root=False):
        """`host_root`: the script runs chrooted into the host's root, seen
        read-only over virtio-9p (with the guest's own /proc, /sys, /dev
        and /run), so host programs (python3 and its modules, the
        project's binaries where they were built) run against the guest's
        kernel and devices without being copied in. The host's /tmp is
        seen as it is (read-only); the script's scratch space is /run."""
        self.devices = list(devices)
        self.modules = list(modules)
        self.script = script
        if host_root:
            self.devices.append("-virtfs local,path=/,mount_tag=host,security_model=none,"
                                "readonly=on,multidevs=remap")
            self.modules += ["9p", "9pnet_virtio", "virtio_pci"]
            self.chrooted = script
            self.script = CHROOT
        self.files = dict(files or {})
        self.memory = memory
        self.netdev = netdev
        self.name = name
        self.timeout = timeout
        self.packages = list(packages)
        self.append = append
        self.proc = None
        self.qmp_sock = None
        self.offset = 0
        self.dir = tempfile.mkdtemp(prefix="guest-", dir=WORK if os.path.isdir(WORK) else None)
        if host_root:
            chrooted = os.path.join(self.dir, "chrooted.sh")
            with open(chrooted, "w") as f:
                f.write(self.chrooted)
            self.files["/chrooted.sh"] = chrooted
        self.console = os.path.join(WORK, f"{name}-console.log")

    # --- setup -------------------------------------------------------------
    def build(self):
        ensure_tools(self.packages)
        vmlinuz, modules_dir = kernel()
        root = os.path.join(self.dir, "root")
        for d in ("bin", "modules", "proc", "sys", "dev", "tmp", "etc"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
        order = module_order(modules_dir, self.modules)
        for key, path in order:
            with open(os.path.join(root, "modules", key + ".ko"), "wb") as out:
                out.write(read_module(path))
        with open(os.path.join(root, "modules", "order"), "w") as f:
            f.write("\n".join(k for k, _ in order) + "\n")
        for dest, src in self.files.items():
            if os.access(src, os.X_OK) and not os.path.isdir(src):
                copy_with_libraries(src, root, dest)
            else:
                to = os.path.join(root, dest.lstrip("/"))
                os.makedirs(os.path.dirname(to), exist_ok=True)
                shutil.copy(src, to)
        # The accounts of a real system: dexts run as nobody.
        with open(os.path.join(root, "etc", "passwd"), "w") as f:
            f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        with open(os.path.join(root, "etc", "group"), "w") as f:
            f.write("root:x:0:\nnogroup:x:65534:\n")
        init = os.path.join(root, "init")
        with open(init, "w") as f:
            f.write(PREAMBLE + self.script + EPILOGUE)
        os.chmod(init, 0o755)
        initrd = os.path.join(self.dir, "initramfs.gz")
        files = subprocess.run(["find", "."], cwd=root, capture_output=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                              input=files, capture_output=True, check=True).stdout
        with gzip.open(initrd, "wb", compresslevel=1) as f:
            f.write(cpio)
        return vmlinuz, initrd

    def __enter__(self):
        vmlinuz, initrd = self.build()
        qmp_path = os.path.join(self.dir, "qmp.sock")
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(self.memory), "-smp", "2",
               "-nographic", "-no-reboot", "-vga", "none",
               "-kernel", vmlinuz, "-initrd", initrd,
               "-append", f"console=ttyS0 quiet panic=-1 {self.append}".strip(),
               "-qmp", f"unix:{qmp_path},server=on,wait=off"]
        if self.netdev:
            # Only ever user-mode networking with restrict=on: the guest
            # reaches nothing but the forwards on 127.0.0.1 it is given.
            if "restrict=on" not in self.netdev:
                raise SystemExit("guest: a netdev must be user-mode with restrict=on")
            cmd += ["-netdev", self.netdev, "-device", "e1000,netdev=n0"]
        else:
            cmd += ["-nic", "none"]
        for d in self.devices:
            cmd += ["-device", d] if not d.startswith("-") else d.split()
        self.out = open(self.console, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"guest: QEMU did not start:\n{self.text()[-3000:]}")
            try:
                self.qmp_sock = socket.socket(socket.AF_UNIX)
                self.qmp_sock.connect(qmp_path)
                break
            except OSError:
                self.qmp_sock.close()
                self.qmp_sock = None
                time.sleep(0.05)
        self.qmp_file = self.qmp_sock.makefile("rw")
        json.loads(self.qmp_file.readline())  # greeting
        self.qmp("qmp_capabilities")
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.qmp_sock:
            self.qmp_sock.close()
        self.out.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False

    # --- console -------------------------------------------------------------
    def text(self):
        with open(self.console, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for(self, pattern, timeout=300):
        """The first console line after the last one waited for that matches
        `pattern` (a regex); its match object."""
        deadline = time.time() + timeout
        regex = re.compile(pattern)
        while True:
            text = self.text()
            rest = text[self.offset:]
            # Lines end at \n only (firmware prints bare \r).
            for line in rest.split("\n")[:-1]:
                self.offset += len(line) + 1
                m = regex.search(line)
                if m:
                    return m
            if self.proc.poll() is not None and self.offset >= len(self.text()):
                raise SystemExit(f"guest: ended before {pattern!r}:\n{text[-4000:]}")
            if time.time() > deadline:
                raise SystemExit(f"guest: no {pattern!r} within {timeout} s:\n{text[-4000:]}")
            time.sleep(0.05)

    def finish(self, timeout=None):
        """Waits for the guest to power off; its whole console."""
        try:
            self.proc.wait(timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit(f"guest: still running after {timeout or self.timeout} s:\n"
                             f"{self.text()[-4000:]}")
        return self.text()

    # --- QMP -----------------------------------------------------------------
    def qmp(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.qmp_file.write(json.dumps(msg) + "\n")
        self.qmp_file.flush()
        while True:
            reply = json.loads(self.qmp_file.readline())
            if "event" in reply:
                continue
            if "error" in reply:
                raise SystemExit(f"guest: QMP {command} {arguments}: {reply['error']}")
            return reply.get("return")

    def send_keys(self, text, hold_ms=50, pause=0.15):
        """Types `text` (letters, digits, space) on QEMU's keyboard."""
        names = {" ": "spc"}
        for c in text:
            key = names.get(c, c)
            self.qmp("send-key", keys=[{"type": "qcode", "data": key}], **{"hold-time": hold_ms})
            time.sleep(pause)


def field(console, name):
    """The value of the first console line `NAME: value`, or None."""
    for line in console.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def free_port():
    """A port on 127.0.0.1 free now, for a forward or a chardev."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(message, console):
    print(f"{message}\n--- console (last lines)\n{console[-5000:]}", file=sys.stderr)
    raise SystemExit(1)


class Chardev:
    """The host's end of a guest's serial line (the FTDI's): QEMU's socket
    chardev on 127.0.0.1."""

    def __init__(self, port):
        deadline = time.time() + 30
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        self.received = bytearray()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        self.sock.settimeout(None)
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            self.received += data

    def wait_for(self, expected, timeout=60):
        deadline = time.time() + timeout
        while expected not in self.received:
            if time.time() > deadline:
                raise SystemExit(f"guest: the chardev got {self.received!r}, "
                                 f"not {expected!r}")
            time.sleep(0.05)

    def send(self, data):
        self.sock.sendall(data)
