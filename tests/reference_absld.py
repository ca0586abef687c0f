"""An ABSLD training step written the way the released script works: a DataLoader with per-sample CPU
transforms, fp32, default memory format, per-sample Python loops for the class temperatures and the
class risks. test_reference_step.py checks that the engine's ABSLD step computes the same loss;
bench/train_throughput.py times both."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS, ALPHA, K = 8 / 255, 2 / 255, 10


class CpuTransformDataset(torch.utils.data.Dataset):
    """Per-sample random crop (pad 4) and flip on the CPU, as torchvision transforms would do."""

    def __init__(self, x_uint8_nhwc: np.ndarray, y: np.ndarray, seed: int = 0):
        self.x, self.y, self.rng = x_uint8_nhwc, y, np.random.default_rng(seed)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = np.pad(self.x[i], ((4, 4), (4, 4), (0, 0)))
        a, b = self.rng.integers(0, 9, 2)
        img = img[a:a + 32, b:b + 32]
        if self.rng.random() < 0.5:
            img = img[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255, int(self.y[i])


def kd_release(b, a_logits):
    return (b * (torch.log(b + 1e-5) - F.log_softmax(a_logits, 1))).mean()


def reference_step(student, teacher, opt, x, y, tau_adv, tau_nat, risk_adv, risk_nat):
    """One ABSLD step written like the release: loops over samples for temperatures and risks."""
    with torch.no_grad():
        t_logits = teacher(x)
    adv_logits, nat_logits = t_logits.clone(), t_logits.clone()
    for i in range(len(y)):
        adv_logits[i] = adv_logits[i] / tau_adv[int(y[i])]
        nat_logits[i] = nat_logits[i] / tau_nat[int(y[i])]
    p_adv, p_nat = F.softmax(adv_logits, 1), F.softmax(nat_logits, 1)
    student.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(K):
        x_adv.requires_grad_(True)
        loss_kl = F.kl_div(F.log_softmax(student(x_adv), 1), p_adv, reduction="sum")
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + ALPHA * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
    student.train()
    z_adv = student(x_adv.detach())
    z_nat = student(x)
    loss = 5 / 6 * kd_release(p_adv, z_adv) + 1 / 6 * kd_release(p_nat, z_nat)
    ce_adv = F.cross_entropy(z_adv, y, reduction="none")
    ce_nat = F.cross_entropy(z_nat, y, reduction="none")
    for i in range(len(y)):
        risk_adv[int(y[i])] += ce_adv[i].item()
        risk_nat[int(y[i])] += ce_nat[i].item()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


