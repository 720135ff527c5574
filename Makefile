# The README's commands. Each target does its own set-up in .venv (created or reused).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# TORCH=cpu (default) installs the CPU build; TORCH=cu128 (or cu126, ...) a CUDA build.
TORCH ?= cpu
# The loopback interface only; HOST=0.0.0.0 serves every interface (set RNN_API_KEYS then).
HOST ?= 127.0.0.1
PORT ?= 8000
# Server processes on the port (`make serve WORKERS=4`); each loads its own copy of the models.
WORKERS ?= 1
SHARED ?= ../shared/data

.PHONY: setup serve test lint train-sentiment train-sentiment-scratch train-lm compare bench clean
.PHONY: docs docs-check image-test
.PHONY: train-lm-ddp train-sentiment-ddp

$(VENV)/.torch-$(TORCH): scripts/install-torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	scripts/install-torch.sh $(PY) $(TORCH)
	rm -f $(VENV)/.torch-*
	touch $@

# torch's own dependencies (sympy, networkx, ...) come from PyPI with the package's.
$(VENV)/.installed: $(VENV)/.torch-$(TORCH) pyproject.toml
	$(PIP) install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## create .venv with torch and the package (dev and train extras)

serve: setup  ## serve the models in models/ on :8000
	$(PY) -m app.serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: setup  ## the whole test suite
	$(PY) -m pytest

# The container test (tests/deploy/test_image.py): builds the image, runs compose's `api`
# service and checks it; it fails where no Docker engine can start (as root it starts dockerd).
image-test: setup  ## build the image and run it with compose: healthy, same answers, graceful stop
	RNN_IMAGE_TEST=required $(PY) -m pytest -m docker tests/deploy

lint: setup
	$(PY) -m ruff check textrnn app training tests bench
	$(PY) -m mypy
	$(PY) -m ruff check scripts
	$(PY) -m mypy scripts/docs_examples.py

SENTIMENT_RECIPE = --train $(SHARED)/sst2/train_phrases.tsv --dev $(SHARED)/sst2/dev.tsv \
	  --label-names negative,positive --cell lstm --bidirectional --pooling max \
	  --embedding-dim 200 --hidden-size 256 --dropout 0.5 --word-dropout 0.1 \
	  --epochs 10 --eval-every 500 --patience 6 --warmup-steps 100

# The shipped sentiment classifier (docs/models.md): an ELMo-style bidirectional word LM
# on the IMDB reviews (with their labels), then the SST-2 classifier fine-tuned from it with
# seeds 1-3; seed 1 ships. DEVICE=cuda runs it on a GPU: 3 + 1 minutes on an H100. On 2 CPU
# cores the pretraining alone takes about 4 hours. EXTRA adds training arguments to each command.
# `make -j3` trains the three seeds side by side.
DEVICE ?= cpu
EXTRA ?=
PRETRAINED ?= runs/pretrain-imdb/encoder.pt
# 6,478 steps (6 epochs) is what the shipped run's --max-minutes 3.0 budget fitted on the H100.
PRETRAIN_RECIPE = --text $(SHARED)/imdb/train.tsv --label-column label \
	  --vocab-text $(SHARED)/sst2/train_phrases.tsv --cell lstm --embedding-dim 200 \
	  --hidden-size 256 --dropout 0.1 --batch-size 128 --lr 3e-3 --max-steps 6478 \
	  --eval-every 540 --patience 4 --val-fraction 0.01 --seed 1 --warmup-steps 100
$(PRETRAINED): | setup
	$(PY) -m training pretrain $(PRETRAIN_RECIPE) --device $(DEVICE) $(EXTRA) --out $@

FT_OUT ?= runs/sentiment
FINETUNE_RECIPE = --train $(SHARED)/sst2/train_phrases.tsv --dev $(SHARED)/sst2/dev.tsv \
	  --label-names negative,positive --pooling max --dropout 0.5 --word-dropout 0.1 \
	  --lr 2e-3 --warmup-steps 100 --epochs 5 --eval-every 350 --patience 6 \
	  --init-from $(PRETRAINED) --keep-head

$(FT_OUT)/seed-%/config.json: $(PRETRAINED) | setup
	$(PY) -m training classify $(FINETUNE_RECIPE) --seed $* --device $(DEVICE) $(EXTRA) \
	  --no-progress --out $(@D) --work-dir $(FT_OUT)/work-$*

train-sentiment: $(foreach s,1 2 3,$(FT_OUT)/seed-$(s)/config.json) | setup  ## the shipped sentiment classifier
	$(PY) -m training.seeds $(FT_OUT)/seed-1 $(FT_OUT)/seed-2 $(FT_OUT)/seed-3 \
	  --ship models/sentiment

# The from-scratch recipe (no pretraining; about 40 minutes a seed on 2 CPU cores), seeds 1-3.
train-sentiment-scratch: setup
	for seed in 1 2 3; do $(PY) -m training classify $(SENTIMENT_RECIPE) --seed $$seed \
	  --device $(DEVICE) $(EXTRA) --out runs/sentiment-scratch/seed-$$seed \
	  --work-dir runs/sentiment-scratch/work-$$seed || exit 1; done
	$(PY) -m training.seeds runs/sentiment-scratch/seed-1 runs/sentiment-scratch/seed-2 \
	  runs/sentiment-scratch/seed-3

LM_RECIPE = --text $(SHARED)/tinyshakespeare/input.txt --cell gru \
	  --num-layers 2 --hidden-size 512 --embedding-dim 64 --dropout 0.2 --bptt 64 --streams 64 \
	  --lr 3e-3 --max-steps 1800 --eval-every 200 --patience 0 --seed 1 --warmup-steps 100

train-lm: setup  ## the shipped character language model (Tiny Shakespeare)
	$(PY) -m training lm $(LM_RECIPE) --overwrite --out models/shakespeare

# The shipped recipes data-parallel on GPUS GPUs of this machine (docs/distributed-training.md):
# the same global batches and schedule, each GPU computing its share of every batch.
# DDP_DEVICE=cpu runs the ranks on the CPU (gloo) instead.
GPUS ?= 2
DDP_DEVICE ?= cuda
TORCHRUN = $(PY) -m torch.distributed.run --standalone --nproc-per-node $(GPUS)

train-lm-ddp: setup  ## train-lm on GPUS GPUs (torchrun)
	$(TORCHRUN) -m training lm $(LM_RECIPE) --device $(DDP_DEVICE) $(EXTRA) --overwrite \
	  --out models/shakespeare

train-sentiment-ddp: setup  ## train-sentiment (pretraining, seeds 1-3) on GPUS GPUs (torchrun)
	$(TORCHRUN) -m training pretrain $(PRETRAIN_RECIPE) --device $(DDP_DEVICE) $(EXTRA) \
	  --out $(PRETRAINED)
	for seed in 1 2 3; do $(TORCHRUN) -m training classify $(FINETUNE_RECIPE) --seed $$seed \
	  --device $(DDP_DEVICE) $(EXTRA) --no-progress --out $(FT_OUT)/seed-$$seed \
	  --work-dir $(FT_OUT)/work-$$seed || exit 1; done
	$(PY) -m training.seeds $(FT_OUT)/seed-1 $(FT_OUT)/seed-2 $(FT_OUT)/seed-3 \
	  --ship models/sentiment

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

bench: setup  ## load benchmark: server vs offline limit vs unbatched baseline (bench/results/)
	$(PY) -m bench.run

compare: setup  ## RNN vs LSTM vs GRU on both tasks, same budget: table + plot into docs/
	$(PY) -m training.compare --shared $(SHARED)

docs: setup  ## rerun every example in README.md and docs/ on the shipped models; rewrite changed outputs
	$(PY) scripts/docs_examples.py --write

docs-check: setup  ## fail when a documented example's output differs from the server's answer
	$(PY) scripts/docs_examples.py --check
