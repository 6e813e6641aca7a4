"""Run by tests/test_pretrain_sharding.py under ``torchrun --nproc_per_node 2``: the gradient of
one step of the loop's ``optimizer_step`` under DDP / FSDP / ZeRO-2 (2 micro-batches per
process, clipping off) against the 1-process gradient of the same global batch. Rank 0 prints
the largest absolute differences (``GRADS {...}``)."""

import json
from contextlib import nullcontext

import torch

from zhtune.pretrain import distributed as ddp
from zhtune.pretrain.loop import PretrainConfig, build_model, n_scored, optimizer_step
from zhtune.text import load_tokenizer

cfg = PretrainConfig(
    text_files=["unused.txt"], hidden_size=32, num_heads=2, intermediate_size=64,
    num_hidden_layers=2, max_seq_length=32, dropout=0.0, max_grad_norm=0.0, batch_size=1,
    gradient_accumulation_steps=2,
)  # fmt: skip
tok = load_tokenizer(None)
g = torch.Generator().manual_seed(0)
ids = torch.randint(1000, 5000, (4, 16), generator=g)  # a global batch of 4 rows
mask = torch.ones_like(ids)
mask[1, 10:] = mask[3, 6:] = 0
labels = torch.where(torch.rand(ids.shape, generator=g) < 0.3, ids, -100)
labels = labels.masked_fill(mask == 0, -100)
batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
n = n_scored(batch, "mlm")


def step_grads(model, scorer, micro, world):
    grads = {}

    class Record:  # an "optimizer" that keeps the step's full gradients
        def step(self):
            for k, p in model.named_parameters():
                grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                grads[k] = grad.detach().clone()

        def zero_grad(self, set_to_none=True):
            pass

    optimizer_step(scorer, micro, n, Record(), None, cfg, nullcontext, world)
    return grads


out = {}
for mode in ("reference", "none", "fsdp", "zero2"):
    requested = "none" if mode == "reference" else mode
    rank, world, device, sharding = ddp.init(torch.device("cpu"), requested)
    model = build_model(cfg, tok)
    if mode == "reference":
        ref = step_grads(model, ddp.Scorer(model, "mlm"), [batch], 1)
        continue
    scorer = ddp.wrap(model, "mlm", device, sharding)
    got = step_grads(model, scorer, ddp.my_rows(batch, rank, world, 2), world)
    assert got.keys() == ref.keys()
    out[mode] = max(float((ref[k] - got[k]).abs().max()) for k in ref)
out["scale"] = max(float(v.abs().max()) for v in ref.values())
if rank == 0:
    print("GRADS " + json.dumps(out))
ddp.close()
