"""What ``dd.checkup`` costs on standard CNNs, against one plain forward + backward pass.

Models (written here from their papers; torchvision is not needed): ResNet-18 (He et al. 2016, basic
blocks [2, 2, 2, 2]) and VGG-11 (Simonyan & Zisserman 2015, configuration A, 4096-4096 classifier on a
7×7 pooled map), 10 classes, batch 8 of 3×64×64 inputs, CPU.

Time: best of `--repeats` runs of each, run alternately (the best is the run least disturbed by other
processes; alternating puts a shared machine's load on both alike).
Memory: peak resident set size of a fresh Python process that builds the model, resets its peak
counter (Linux ``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` of the whole process) and runs the
operation once, so neither measurement inherits the other's allocator state (tracemalloc does not see
torch's allocations). The model's weights count in both.

    PYTHONPATH=src python benchmarks/checkup_cost.py [--repeats 5] [--threads 1]

Goal: checkup ≤ 2× the time and ≤ 1.3× the peak memory of one forward + backward.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, c in enumerate((64, 128, 256, 512)):
            stages.append(nn.Sequential(BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c)))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def vgg11(n_classes: int = 10) -> nn.Module:
    layers, c = [], 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                          nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(),
                          nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, n_classes))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


MODELS = {"resnet18": ResNet18, "vgg11": vgg11}


def setup(name: str):
    torch.manual_seed(0)
    return MODELS[name](), torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))


def plain(model, x, y) -> None:
    for p in model.parameters():
        p.grad = None
    nn.functional.cross_entropy(model(x), y).backward()


def checkup(model, x, y) -> None:
    import deepdiag as dd

    dd.checkup(model, x, y)


OPS = {"plain": plain, "checkup": checkup}


def _peak_mib() -> float:
    """Peak RSS since the last reset (Linux: VmHWM), else ru_maxrss of the whole process."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB on Linux, bytes on macOS
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def child(name: str, op: str) -> None:
    """Build the model, reset the peak-RSS counter (Linux: /proc/self/clear_refs, so building the model
    does not count), run `op` once, print the peak RSS in MiB (a fresh process per measurement)."""
    model, x, y = setup(name)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    OPS[op](model, x, y)
    print(json.dumps({"maxrss_mib": _peak_mib()}))


def best_times(fns, model, x, y, repeats: int) -> list[float]:
    """Best time of each of `fns`, run alternately (plain, checkup, plain, ...) so that load on a shared
    machine falls on both alike."""
    for fn in fns:
        fn(model, x, y)  # warm-up (allocator, first-call dispatch)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn(model, x, y)
            ts.append(time.perf_counter() - t)
    return [min(ts) for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="resnet18,vgg11")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "OP"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.child:
        return child(*a.child)
    print(f"torch {torch.__version__}, {a.threads} thread(s), batch 8 of 3×64×64, best of {a.repeats}")
    print("| model | fwd+bwd (ms) | checkup (ms) | time ratio | peak RSS fwd+bwd (MiB) | checkup (MiB) | memory ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in a.models.split(","):
        model, x, y = setup(name)
        t_plain, t_check = best_times((plain, checkup), model, x, y, a.repeats)
        mem = {}
        for op in OPS:
            out = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--child", name, op],
                                 capture_output=True, text=True, check=True)
            mem[op] = json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mib"]
        print(f"| {name} | {1e3 * t_plain:.0f} | {1e3 * t_check:.0f} | {t_check / t_plain:.2f}× | {mem['plain']:.0f} | "
              f"{mem['checkup']:.0f} | {mem['checkup'] / mem['plain']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
