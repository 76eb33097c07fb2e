"""New heads trained on cached features: logistic regression with a tuned L2, or a small MLP.

Logistic regression (multinomial, on standardised features) is the classic linear probe: with a
few images per class it cannot overfit much, and its one hyper-parameter, the L2 strength, is
chosen by stratified k-fold cross-validation on the training images (folds split images, never
the views of one image). With class weights (`class_weight='balanced'` in scikit-learn's words)
each image's loss is scaled by its class's weight, in the fit and in the cross-validation's
scores, so the L2 is chosen for the rare classes too. It is fitted with full-batch L-BFGS in
float64, so the result depends on the data and the L2 only -- no learning rate, no epochs. The
fitted standardisation is folded into an ordinary `nn.Linear` (W' = W / sd, b' = b - W' mu),
which becomes the model's classifier.

Every feature tensor here is (N, views, D): training uses every view as a sample, prediction
averages the class probabilities over the views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# L2 strengths tried by cross-validation (on the mean cross-entropy of standardised features).
L2_GRID = tuple(10.0 ** e for e in (-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0))
# The L2 used when some class has too few images (< 2) to cross-validate: mid-grid.
FALLBACK_L2 = 1e-2


@dataclass
class HeadFit:
    """A fitted head and how it was chosen."""

    head: nn.Module
    kind: str  # 'linear' or 'mlp'
    l2: float | None = None
    cv: list[dict[str, float]] = field(default_factory=list)  # per L2: cv_acc, cv_loss


@contextmanager
def single_thread() -> Iterator[None]:
    """Run small tensor problems on one thread. Head fitting is thousands of tiny matrix
    products; with two threads each pays a thread hand-off, and on a busy machine that made a
    100 x 1280 fit 175x slower (measured: 22.7 s vs 0.13 s for 1,000 gradient evaluations)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# A feature's std is taken as at least this fraction of the median std over the features.
STD_FLOOR = 0.25


def _standardise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and std of features (N, D). A feature flat in every training image (a
    ReLU unit none of them fires) gets std 1, as a flat input channel does
    (`engine.run.channel_stats`): divided by ~0, the slightest activation in a new image became
    ~10^5 and outweighed every other feature in the MLP head, whose first layer starts random
    (efficientnet_lite0's 1,280 features on 18 images: 93 flat, and a whole photo of a
    training class predicted as another).

    Any other feature's std is at least `STD_FLOOR` x the median std: a unit that fires faintly
    on one or two training images has a std of ~1e-5 (Lite0's 1,280 head features, `--stages
    none`: ~75 below 5 % of the median at 2-50 images per class), and a new image firing it
    normally stood thousands of standard deviations out (up to 67,000), so that one unit decided
    the prediction. `benchmarks/transfer.py --methods features --stages none`, 3 draws, logistic
    head, hard set at 2 / 5 / 10 / 50 per class: 0.404 / 0.564 / 0.611 / 0.736 before, 0.504 /
    0.612 / 0.635 / 0.737 with the floor; easy set 0.685 / 0.902 / 0.935 / 0.962 before, 0.889 /
    0.937 / 0.959 / 0.968; the MLP head gained as much (docs/transfer.md). On Lite0's default
    stages 4 + 5 no std was below 29 % of the median in 30 draws: nothing changes there. 50 %
    gained a little more with `--stages none` but moved the default stages by +-0.002."""
    mu = x.mean(0)
    sd = x.std(0, unbiased=False)
    floor = STD_FLOOR * sd.median()
    return mu, torch.where(sd < 1e-6, torch.ones_like(sd), sd.clamp_min(floor))


def _lbfgs_logistic(x: Tensor, y: Tensor, k: int, l2: float, *, max_iter: int = 150,
                    init: tuple[Tensor, Tensor] | None = None,
                    class_weights: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Minimise mean CE(x W^T + b, y) + l2/2 ||W||^2 over (W, b) with L-BFGS, in float64; with
    `class_weights`, each sample's CE times its class's weight (the mean still over n: with
    balanced weights they sum to n, and this is scikit-learn's objective at C = 1 / (n l2)).

    The gradient is written out ((P - Y)^T x / n + l2 W, the column sums of P - Y) rather than
    taken by autograd: these problems are small and autograd's bookkeeping dominated their time.
    `init`: a warm start (the cross-validation's, `_extrapolate`d from the stronger L2s).
    """
    n, d = x.shape
    onehot = F.one_hot(y, k).double()
    if class_weights is not None:  # folded into the one-hot targets: no cost per evaluation
        onehot = onehot * class_weights.double()[y, None]
    weight = onehot.sum(1, keepdim=True)  # each sample's weight s: d/dz of -s log p_y = s p - onehot

    def loss_grad(p: Tensor) -> tuple[float, Tensor]:
        w, b = p[:k * d].view(k, d), p[k * d:]
        logp = torch.addmm(b, x, w.T).log_softmax(1)
        loss = -(logp * onehot).sum() / n + 0.5 * l2 * (w * w).sum()
        g = (logp.exp() * weight - onehot) / n
        return float(loss), torch.cat([torch.addmm(w, g.T, x, alpha=1.0, beta=l2).flatten(),
                                       g.sum(0)])  # fmt: skip

    if init is None:
        p0 = torch.zeros(k * (d + 1), dtype=torch.float64)
    else:
        p0 = torch.cat([init[0].flatten(), init[1]]).double()
    p = lbfgs(loss_grad, p0, max_iter=max_iter)
    return p[:k * d].view(k, d).clone(), p[k * d:].clone()


def lbfgs(loss_grad: Callable[[Tensor], tuple[float, Tensor]], p: Tensor, *, max_iter: int,
          history: int = 10, tolerance_grad: float = 1e-6,
          tolerance_change: float = 1e-9) -> Tensor:  # fmt: skip
    """Minimise a smooth convex function of a float64 vector with L-BFGS and a backtracking
    (Armijo) line search; `loss_grad(p)` gives (loss, gradient). It stops as torch.optim.LBFGS
    did with these settings: the largest gradient entry at most `tolerance_grad`, or a step or
    a change in loss below `tolerance_change`, or `max_iter` iterations.

    Written out, not torch.optim.LBFGS: building the first torch optimizer in a process imports
    torch._dynamo (2.7-4.5 s wall), which every features run paid in its head step."""
    loss, g = loss_grad(p)
    steps: list[tuple[Tensor, Tensor, float]] = []  # (s, y, 1 / s.y), oldest first
    for it in range(max_iter):
        if float(g.abs().max()) <= tolerance_grad:
            break
        q = -g  # the two-loop recursion: q becomes -H g, H the inverse-Hessian estimate
        alphas = []
        for s, yv, rho in reversed(steps):
            a = rho * float(s @ q)
            alphas.append(a)
            q -= a * yv
        if steps:
            s, yv, _ = steps[-1]
            q *= float(s @ yv) / float(yv @ yv)
        for (s, yv, rho), a in zip(steps, reversed(alphas), strict=True):
            q += (a - rho * float(yv @ q)) * s
        slope = float(g @ q)
        if slope > -tolerance_change:  # not a descent direction worth taking
            break
        t = 1.0 if it else min(1.0, 1.0 / float(g.abs().sum()))
        while True:
            new = p + t * q
            new_loss, new_g = loss_grad(new)
            if new_loss <= loss + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        s, yv = new - p, new_g - g
        sy = float(s @ yv)
        if sy > 1e-10:  # curvature seen along the step: keep it (a convex loss has sy >= 0)
            steps.append((s, yv, 1.0 / sy))
            del steps[:-history]
        change = abs(new_loss - loss)
        p, loss, g = new, new_loss, new_g
        if change < tolerance_change or float(s.abs().max()) <= tolerance_change:
            break
    return p


def _extrapolate(path: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor] | None:
    """The warm start for the next L2 of the grid from the solutions at the previous ones: the
    quadratic through the last three (the grid is evenly spaced in log L2, and the solution
    moves smoothly along it), else the line through two, else the last one. From the last
    solution alone the weak-L2 fits took 1.8x the loss evaluations: benchmarks/transfer.py's
    features rows, hard set, draw 0, 1,505 -> 890 at 10 / class and 3,627 -> 1,817 at 50;
    digits as a folder (1,151 images x 2 views, 432 features) 5,307 -> 3,027. The optimum
    does not depend on the start: chosen L2 and test accuracy stayed the same."""
    if len(path) < 2:
        return path[-1] if path else None
    (a0, b0), (a1, b1) = path[-1], path[-2]
    if len(path) == 2:
        return 2 * a0 - a1, 2 * b0 - b1
    a2, b2 = path[-3]
    return 3 * a0 - 3 * a1 + a2, 3 * b0 - 3 * b1 + b2


def _reduce(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(z, v): with more dimensions than samples, the L2-penalised solution lies in the span of
    the samples (the representer theorem), so the problem is solved exactly on the n x r
    coordinates z = x v of that span and mapped back with W = A v^T; v is None when D <= n."""
    n, d = x.shape
    if d <= n:
        return x, None
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh.T  # (d, r), r = n
    return x @ v, v


def _flatten(feats: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    n, v, d = feats.shape
    return feats.reshape(n * v, d).double(), labels.repeat_interleave(v)


def _folds(labels: Tensor, k: int, seed: int) -> list[Tensor]:
    """Stratified fold index per image: each class dealt round-robin after a seeded shuffle."""
    g = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.int64)
    for c in labels.unique():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        fold[members] = torch.arange(len(members)) % k
    return [torch.nonzero(fold == i).flatten() for i in range(k)]


def fit_logistic(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    l2: float | None = None,
    folds: int = 5,
    seed: int = 0,
    class_weights: Tensor | None = None,
) -> HeadFit:
    """Logistic regression on features (N, views, D); `l2=None` tunes it by cross-validation.

    The number of folds is capped by the smallest class (each fold must hold every class once
    at least); with fewer than 2 images in some class `FALLBACK_L2` is used and `cv` is empty.
    class_weights: a loss weight per class (`engine.task.class_weights`), also weighting the
    cross-validation's accuracy and loss; None: every image counts the same.
    """
    with single_thread():
        return _fit_logistic(feats, labels, num_classes, l2=l2, folds=folds, seed=seed,
                             class_weights=class_weights)


def _fit_logistic(feats: Tensor, labels: Tensor, num_classes: int, *, l2: float | None,
                  folds: int, seed: int, class_weights: Tensor | None = None) -> HeadFit:  # fmt: skip
    labels = torch.as_tensor(labels, dtype=torch.int64)
    cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float64)
    cv: list[dict[str, float]] = []
    raw: dict[float, list[tuple[Tensor, Tensor]]] = {}  # each fold's head on the raw features
    if l2 is None:
        smallest = int(torch.bincount(labels, minlength=num_classes).min())
        k = min(folds, smallest)
        if k < 2:
            l2 = FALLBACK_L2
        else:
            parts = _folds(labels, k, seed)
            prepared = []
            for i in range(k):
                train = torch.cat([parts[j] for j in range(k) if j != i])
                xt, yt = _flatten(feats[train], labels[train])
                mu, sd = _standardise(xt)
                z, v = _reduce((xt - mu) / sd)
                prepared.append((parts[i], yt, mu, sd, z, v))
            scores: dict[float, list[float]] = {lam: [0.0, 0.0, 0.0] for lam in L2_GRID}
            for val, yt, mu, sd, z, v in prepared:
                path: list[tuple[Tensor, Tensor]] = []  # this fold's solutions so far
                for lam in sorted(L2_GRID, reverse=True):  # strong to weak: warm starts
                    a_, b_ = _lbfgs_logistic(z, yt, num_classes, lam, init=_extrapolate(path),
                                             class_weights=cw)  # fmt: skip
                    path.append((a_, b_))
                    w = (a_ @ v.T if v is not None else a_) / sd
                    raw.setdefault(lam, []).append((w, b_ - w @ mu))
                    probs = _probs(feats[val].double(), *raw[lam][-1])
                    s_ = scores[lam]
                    yv = labels[val]
                    sw = cw[yv] if cw is not None else torch.ones(len(val), dtype=torch.float64)
                    s_[0] += float((sw * (probs.argmax(1) == yv)).sum())
                    s_[1] += float((sw * -probs[torch.arange(len(val)), yv]
                                    .clamp_min(1e-12).log()).sum())
                    s_[2] += float(sw.sum())
            cv = [{"l2": lam, "cv_acc": s_[0] / s_[2], "cv_loss": s_[1] / s_[2]}
                  for lam, s_ in scores.items()]  # fmt: skip
            # Best accuracy; ties (common with few images) go to the lower loss.
            l2 = max(cv, key=lambda r: (round(r["cv_acc"], 9), -r["cv_loss"]))["l2"]
    x, y = _flatten(feats, labels)
    mu, sd = _standardise(x)
    z, v = _reduce((x - mu) / sd)
    init = None
    if l2 in raw:  # from the folds' mean head at this L2, in these features' coordinates
        w = torch.stack([h[0] for h in raw[l2]]).mean(0)
        b = torch.stack([h[1] for h in raw[l2]]).mean(0)
        init = (w * sd @ v if v is not None else w * sd, b + w @ mu)
    a, b = _lbfgs_logistic(z, y, num_classes, l2, max_iter=300, init=init, class_weights=cw)
    w = a @ v.T if v is not None else a
    head = nn.Linear(feats.shape[2], num_classes)
    with torch.no_grad():
        head.weight.copy_((w / sd).float())
        head.bias.copy_((b - (w / sd) @ mu).float())
    return HeadFit(head, "linear", l2, cv)


def _probs(feats: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Mean over views of softmax(f W^T + b); feats (N, V, D)."""
    return (feats @ w.T + b).softmax(-1).mean(1)


@torch.no_grad()
def head_probabilities(head: nn.Module, feats: Tensor) -> Tensor:
    """Class probabilities (N, K) of features (N, views, D): the mean over the views."""
    was = head.training
    head.eval()
    try:
        return head(feats.float()).softmax(-1).mean(1)
    finally:
        head.train(was)


class MLPHead(nn.Sequential):
    """Linear -> ReLU -> Dropout -> Linear: a small non-linear head on the pooled features."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256,
                 dropout: float = 0.3) -> None:  # fmt: skip
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, num_classes))  # fmt: skip
        self.hidden = hidden
        self.dropout = dropout


def fit_mlp(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    hidden: int = 256,
    dropout: float = 0.3,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
    class_weights: Tensor | None = None,
) -> HeadFit:
    """A small MLP on (standardised) features, AdamW with a cosine schedule, full-batch steps.

    The standardisation is folded into the first layer, so the result is a plain module.
    class_weights: a loss weight per class, as `ClassificationTask` applies them.
    """
    cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    x, y = _flatten(feats, labels)
    x = x.float()
    mu, sd = _standardise(x)
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.manual_seed(seed)
        head = MLPHead(feats.shape[2], num_classes, hidden, dropout)
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        xs = (x - mu) / sd
        head.train()
        with torch.enable_grad():
            for step in range(epochs):
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / epochs))
                loss = F.cross_entropy(head(xs), y, weight=cw, label_smoothing=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
    first = head[0]
    with torch.no_grad():
        first.bias.sub_((first.weight / sd) @ mu)
        first.weight.div_(sd)
    head.eval()
    return HeadFit(head, "mlp")


def install_head(model: nn.Module, head: nn.Module) -> None:
    """Make `head` the model's classifier (the module `get_classifier()` returns), wherever the
    architecture keeps it (`_fc`, `fc`, `classifier`, `classifier[6]`, ...)."""
    old = model.get_classifier()
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if child is old:
                setattr(parent, child_name, head)
                return
    raise ValueError(f"cannot find the classifier of {type(model).__name__}")
