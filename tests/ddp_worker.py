"""Run under torchrun: trains a tiny model with DDP (gloo) and writes each rank's weights."""
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from cvae.config import preset
from cvae.train import train

out, data = Path(sys.argv[1]), sys.argv[2]
cfg = preset("cpu", data=data, out=str(out / "run"), width=0.125, g_dim=16, z_dim=4, rnn_size=16, batch_size=4,
             epochs=2, iters_per_epoch=3, val_seqs=2, tfr=0.5, tfr_decay_step=0.0, num_workers=0)
model = train(cfg, progress=False)
rank = dist.get_rank()
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / f"rank{rank}.safetensors")
dist.destroy_process_group()
