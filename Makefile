# The README's commands. Each target does its own set-up in .venv (created or reused).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# TORCH=cpu (default) installs the CPU build; TORCH=cu128 (or cu126, ...) a CUDA build.
TORCH ?= cpu
HOST ?= 0.0.0.0
PORT ?= 8000
SHARED ?= ../shared/data

.PHONY: setup serve test lint train-sentiment train-sentiment-pretrained train-lm compare bench clean

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
	$(PY) -m uvicorn app.main:app --host $(HOST) --port $(PORT)

test: setup  ## the whole test suite
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check textrnn app training tests bench
	$(PY) -m mypy

SENTIMENT_RECIPE = --train $(SHARED)/sst2/train_phrases.tsv --dev $(SHARED)/sst2/dev.tsv \
	  --label-names negative,positive --cell lstm --bidirectional --pooling max \
	  --embedding-dim 200 --hidden-size 256 --dropout 0.5 --word-dropout 0.1 \
	  --epochs 10 --eval-every 500 --patience 6

train-sentiment: setup  ## the shipped sentiment classifier (SST-2), then seeds 2 and 3 of its recipe
	$(PY) -m training classify $(SENTIMENT_RECIPE) --seed 1 --out models/sentiment
	$(PY) -m training classify $(SENTIMENT_RECIPE) --seed 2 --out runs/sentiment-seeds/seed-2 \
	  --work-dir runs/sentiment-seeds/work-2
	$(PY) -m training classify $(SENTIMENT_RECIPE) --seed 3 --out runs/sentiment-seeds/seed-3 \
	  --work-dir runs/sentiment-seeds/work-3
	$(PY) -m training.seeds models/sentiment runs/sentiment-seeds/seed-2 runs/sentiment-seeds/seed-3

# The IMDB-pretraining experiment (README, "Pretraining"): not what ships, see there why.
PRETRAINED ?= runs/pretrain-imdb/encoder.pt
$(PRETRAINED): | setup
	$(PY) -m training pretrain --text $(SHARED)/imdb/train.tsv --label-column label \
	  --vocab-text $(SHARED)/sst2/train_phrases.tsv --cell lstm --embedding-dim 200 \
	  --hidden-size 256 --dropout 0.1 --batch-size 128 --lr 3e-3 --max-steps 700 \
	  --eval-every 175 --val-fraction 0.01 --threads 2 --seed 1 --out $@

train-sentiment-pretrained: setup $(PRETRAINED)  ## the same task, starting from the IMDB encoder
	$(PY) -m training classify --train $(SHARED)/sst2/train_phrases.tsv \
	  --dev $(SHARED)/sst2/dev.tsv --label-names negative,positive --pooling max --dropout 0.5 \
	  --word-dropout 0.1 --lr 2e-3 --warmup-steps 100 --epochs 5 --eval-every 350 --patience 6 \
	  --init-from $(PRETRAINED) --keep-head --seed 1 --out runs/sentiment-pretrained

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
