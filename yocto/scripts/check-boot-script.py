"""Run fieldlink's A/B boot script (boot.cmd.in, as fieldlink-boot-script makes it for qemuarm64)
in a real U-Boot: Debian's u-boot-qemu build for QEMU's arm64 virt machine.

The disk has the image's layout (boot partition with boot.scr, root slots A and B with a
/boot/Image each: text files of different sizes, so "N bytes read" tells which slot was loaded).
U-Boot finds boot.scr itself at power-on; later "boots" are the script run again from U-Boot's
prompt, with the environment (BOOT_ORDER, BOOT_x_LEFT) carried over as a reboot would carry
it in uboot.env. (Debian's build keeps its environment in emulated flash, and QEMU 7.2's flash
refuses U-Boot's buffered writes, so a real reset would lose it.)

Checked: slot A first, three attempts, then the fall-back to B; BOOT_ORDER "B A" with fresh
counters (what `rauc install` writes) boots B; root= and rauc.slot= on the kernel command line;
with no attempts left anywhere, both slots get new attempts and U-Boot resets.

    python3 yocto/scripts/check-boot-script.py WORKDIR
"""

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = ROOT / "yocto/meta-fieldlink/recipes-bsp/fieldlink-boot-script"
UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
PROMPT = "=> "
KERNEL_TEXT = {"A": "not a kernel: slot A\n", "B": "not a kernel, but the one in slot B\n"}


class BootCheckError(Exception):
    """The script did not behave as the A/B scheme requires."""


def qemuarm64_values() -> dict[str, str]:
    """The placeholders' values for qemuarm64, read from the recipe (its :qemuarm64 lines win)."""
    recipe = next(RECIPE_DIR.glob("fieldlink-boot-script_*.bb")).read_text()
    values = {}
    for name in ("BOOT_INTERFACE", "BOOT_DEVICE", "ROOT_DEVICE_PREFIX", "FDT_ADDR", "BOOTARGS_BASE"):
        default = re.search(rf'^FIELDLINK_{name} \?= "(.*)"$', recipe, re.M)
        machine = re.search(rf'^FIELDLINK_{name}:qemuarm64 = "(.*)"$', recipe, re.M)
        found = machine or default
        if not found:
            raise BootCheckError(f"FIELDLINK_{name} not found in the recipe")
        values[name] = found.group(1)
    values["KERNEL_IMAGETYPE"] = "Image"
    return values


def make_disk(work: Path) -> Path:
    text = (RECIPE_DIR / "files/boot.cmd.in").read_text()
    for name, value in qemuarm64_values().items():
        text = text.replace(f"@@{name}@@", value)
    if "@@" in text:
        raise BootCheckError(f"unfilled placeholder in boot.cmd: {re.findall(r'@@[A-Z_]+@@', text)}")
    (work / "boot.cmd").write_text(text)
    run("mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-n", "fieldlink A/B boot",
        "-d", work / "boot.cmd", work / "boot.scr")

    disk = work / "disk.img"
    mib = 1024 * 1024
    # 1 MiB gap, then boot (16 MiB, FAT), root A, root B (16 MiB each), data (8 MiB).
    layout = [(1, 16, "c", True), (17, 16, "83", False), (33, 16, "83", False), (49, 8, "83", False)]
    with open(disk, "wb") as f:
        f.truncate(64 * mib)
    table = "label: dos\n" + "".join(
        f"start={start * 2048}, size={size * 2048}, type={kind}{', bootable' if boot else ''}\n"
        for start, size, kind, boot in layout)
    subprocess.run(["sfdisk", "-q", str(disk)], input=table, text=True, check=True)

    boot = work / "boot.vfat"
    with open(boot, "wb") as f:
        f.truncate(16 * mib)
    run("mkfs.vfat", "-n", "BOOT", boot)
    run("mcopy", "-i", boot, work / "boot.scr", "::/boot.scr")
    images = [boot]
    for slot in ("A", "B"):
        tree = work / f"root{slot}"
        (tree / "boot").mkdir(parents=True)
        (tree / "boot/Image").write_text(KERNEL_TEXT[slot])
        image = work / f"root{slot}.ext4"
        with open(image, "wb") as f:
            f.truncate(16 * mib)
        run("mkfs.ext4", "-q", "-F", "-d", tree, image)
        images.append(image)
    with open(disk, "r+b") as f:
        for (start, _, _, _), image in zip(layout, images):
            f.seek(start * mib)
            f.write(image.read_bytes())
    return disk


def run(*args) -> None:
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class UBoot:
    """U-Boot on QEMU's serial console."""

    def __init__(self, disk: Path):
        self.proc = subprocess.Popen(
            ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "256", "-nographic",
             "-nic", "none", "-bios", str(UBOOT),
             "-drive", f"if=none,id=disk0,format=raw,file={disk}", "-device", "virtio-blk-device,drive=disk0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = ""

    def read_until(self, marker: str, timeout: float = 60) -> str:
        """Everything printed until marker (which is consumed)."""
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise BootCheckError(f"no {marker!r} from U-Boot; last output:\n{self.output[-2000:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1))
            if ready:
                self.output += os.read(self.proc.stdout.fileno(), 65536).decode(errors="replace")
        before, _, self.output = self.output.partition(marker)
        return before

    def command(self, line: str, until: str = PROMPT) -> str:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.read_until(until)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def expect_boot(text: str, slot: str, what: str) -> None:
    partition = {"A": 2, "B": 3}[slot]
    size = len(KERNEL_TEXT[slot])
    wanted = [f"fieldlink: booting slot {slot} (virtio 0:{partition})", f"{size} bytes read", "Bad Linux ARM64 Image magic"]
    missing = [w for w in wanted if w not in text]
    if missing:
        raise BootCheckError(f"{what}: expected slot {slot}, missing {missing} in:\n{text[-1500:]}")


def env(uboot: UBoot, name: str) -> str:
    out = uboot.command(f"printenv {name}")
    found = re.search(rf"^{name}=(.*?)\r?$", out, re.M)
    return found.group(1) if found else ""


def main() -> int:
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    try:
        uboot = UBoot(make_disk(work))
    except (BootCheckError, subprocess.CalledProcessError) as e:
        print(f"check-boot-script: {e}", file=sys.stderr)
        return 1
    again = "load virtio 0:1 ${scriptaddr} /boot.scr; source ${scriptaddr}"
    try:
        # Power-on: U-Boot's distro boot finds boot.scr on the bootable partition.
        expect_boot(uboot.read_until(PROMPT, timeout=90), "A", "first boot")
        expect_boot(uboot.command(again), "A", "second boot (A has attempts left)")
        expect_boot(uboot.command(again), "A", "third boot")
        if env(uboot, "BOOT_A_LEFT") != "0":
            raise BootCheckError("A should have no attempts left after three boots")
        expect_boot(uboot.command(again), "B", "fourth boot (A used up: fall back)")
        bootargs = env(uboot, "bootargs")
        if "root=/dev/vda3" not in bootargs or "rauc.slot=B" not in bootargs:
            raise BootCheckError(f"kernel command line for slot B: {bootargs!r}")
        # What `rauc install` into A, then `rauc status mark-good` would leave: A first, fresh counters.
        uboot.command('setenv BOOT_ORDER "A B"; setenv BOOT_A_LEFT 3; setenv BOOT_B_LEFT 3')
        expect_boot(uboot.command(again), "A", "after an update to A")
        uboot.command('setenv BOOT_ORDER "B A"')
        expect_boot(uboot.command(again), "B", "BOOT_ORDER B A")
        # No attempts left on either slot: both get new ones, and U-Boot starts over.
        uboot.command("setenv BOOT_A_LEFT 0; setenv BOOT_B_LEFT 0")
        text = uboot.command(again, until="U-Boot 20")
        if "no slot has boot attempts left" not in text:
            raise BootCheckError(f"both slots used up: no reset message in:\n{text[-1500:]}")
    except BootCheckError as e:
        print(f"check-boot-script: {e}", file=sys.stderr)
        return 1
    finally:
        uboot.close()
    print("boot script (U-Boot on QEMU): A three times then B; BOOT_ORDER and fresh counters obeyed; reset when both used up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
