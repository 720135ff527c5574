# The README's commands. Each target does its own set-up in .venv (created or reused).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# TORCH=cpu (default) installs the CPU build; TORCH=cu128 (or cu126, ...) a CUDA build.
TORCH ?= cpu
HOST ?= 0.0.0.0
PORT ?= 8000
# Server processes on the port (`make serve WORKERS=4`); each loads its own copy of the models.
WORKERS ?= 1
SHARED ?= ../shared/data

.PHONY: setup serve test lint train-sentiment train-sentiment-scratch train-lm compare bench clean

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

lint: setup
	$(PY) -m ruff check textrnn app training tests bench
	$(PY) -m mypy

SENTIMENT_RECIPE = --train $(SHARED)/sst2/train_phrases.tsv --dev $(SHARED)/sst2/dev.tsv \
	  --label-names negative,positive --cell lstm --bidirectional --pooling max \
	  --embedding-dim 200 --hidden-size 256 --dropout 0.5 --word-dropout 0.1 \
	  --epochs 10 --eval-every 500 --patience 6

# The shipped sentiment classifier (README, "Pretraining"): an ELMo-style bidirectional word LM
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
	  --eval-every 540 --patience 4 --val-fraction 0.01 --seed 1
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

train-lm: setup  ## the shipped character language model (Tiny Shakespeare)
	$(PY) -m training lm --text $(SHARED)/tinyshakespeare/input.txt --cell gru \
	  --num-layers 2 --hidden-size 512 --embedding-dim 64 --dropout 0.2 --bptt 64 --streams 64 \
	  --lr 3e-3 --max-steps 1800 --eval-every 200 --patience 0 --seed 1 --out models/shakespeare

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

bench: setup  ## load benchmark: server vs offline limit vs unbatched baseline (bench/results/)
	$(PY) -m bench.run

compare: setup  ## RNN vs LSTM vs GRU on both tasks, same budget: table + plot into the README
	$(PY) -m training.compare --shared $(SHARED)
