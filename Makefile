# Quick start: `make demo` (train -> evaluate -> export on the embedded synthetic corpus, offline)
# and `make test`. Both create the Python 3.10 virtualenv in .venv on first use.
SHELL := /bin/bash
# Python 3.10: fastdeploy-python 1.0.7 has wheels for CPython 3.8-3.10 only. pyenv's shim for an
# inactive version fails, so installed pyenv versions are tried too.
PYTHON ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && echo $$p && break; done)
VENV := .venv
# Python 3.7 for the Paddle Lite tool virtualenv: paddlelite 2.12 has wheels for CPython 3.7 only.
LITE_PYTHON ?= $(shell for p in python3.7 $$HOME/.pyenv/versions/3.7*/bin/python3.7; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 7)' 2>/dev/null && echo $$p && break; done)
LITE_VENV := .venv-lite
PY := $(VENV)/bin/python

# CORPUS empty: the synthetic corpus; a path; or "auto" to search data/nlpcc2018/ and ../shared/data/nlpcc2018/.
CORPUS ?=
DATA_DIR ?= data/prepared
OUTPUT_DIR ?= output/demo
# CPU math threads, 0 = one per core (the environment's OMP_NUM_THREADS=1 is overridden on purpose).
CPU_THREADS ?= 0
DEMO_EPOCHS ?= 10
comma := ,
space := $(subst ,, )

.PHONY: setup data demo test train-dist train-throughput nlpcc-runs train-nlpcc train-nlpcc-plain train-nlpcc-tokenwise context-runs-nlpcc context-report-nlpcc toward86-runs-nlpcc toward86-report-nlpcc mlm-report-nlpcc compression-runs-nlpcc toward86-compression-runs-nlpcc decoding-report decoding-report-nlpcc decoding-report-nlpcc-crf compress compress-nlpcc benchmark benchmark-nlpcc benchmark-targets-nlpcc benchmark-targets-batch1-nlpcc serve serve-redis serve-load-nlpcc front-ends-nlpcc paddle-inference-settings-nlpcc batch-independence-nlpcc training-size training-size-nlpcc label-change-nlpcc value-resolution-nlpcc notebook analysis-nlpcc cpp lite-setup android-model distill distill-nlpcc clean

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.10 not found: install it (e.g. pyenv install 3.10) or pass PYTHON=/path/to/python3.10"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# decoding.py's intent softmax, Viterbi and span confidences in C++ (deploy/cpp/decoding.cc), loaded with ctypes;
# without it the prediction path decodes in numpy (same results, slower).
DECODING_LIB := build/libslu_decoding.so
$(DECODING_LIB): deploy/cpp/decoding.cc deploy/cpp/decoding_capi.cc deploy/cpp/slu.h
	@mkdir -p build
	g++ -O2 -std=c++17 -shared -fPIC -Wall -Wextra -o $@ deploy/cpp/decoding.cc deploy/cpp/decoding_capi.cc

setup: $(VENV)/.installed $(DECODING_LIB)

data: setup
	$(PY) data/prepare_data.py --output_dir $(DATA_DIR) \
		$(if $(CORPUS),$(if $(filter auto,$(CORPUS)),,--corpus_file $(CORPUS)),--synthetic)

demo: data
	$(PY) run_train.py --from_scratch --model_name_or_path ernie-3.0-tiny-nano-v2-zh \
		--data_dir $(DATA_DIR) --output_dir $(OUTPUT_DIR) --do_train --do_eval --do_export \
		--num_train_epochs $(DEMO_EPOCHS) --learning_rate 5e-4 --warmup_ratio 0.1 \
		--cpu_threads $(CPU_THREADS) --seed 42

# The demo recipe trained data-parallel by `python -m paddle.distributed.launch`: NPROC processes
# (here CPU processes over gloo, one math thread each), batch 64/NPROC each: the demo's global
# batch of 64. Launcher logs in $(OUTPUT_DIR)-dist/launch-logs/workerlog.N; outputs written by rank 0.
NPROC ?= 2
train-dist: data
	$(PY) -m paddle.distributed.launch --nproc_per_node $(NPROC) --log_dir $(OUTPUT_DIR)-dist/launch-logs \
		run_train.py --from_scratch --model_name_or_path ernie-3.0-tiny-nano-v2-zh \
		--data_dir $(DATA_DIR) --output_dir $(OUTPUT_DIR)-dist --do_train --do_eval --do_export \
		--num_train_epochs $(DEMO_EPOCHS) --learning_rate 5e-4 --warmup_ratio 0.1 \
		--per_device_train_batch_size $$((64 / $(NPROC))) --cpu_threads 1 --seed 42

# Training throughput: the CPU fixes, and 1 process x 2 threads against 2 processes x 1 thread.
train-throughput: setup
	$(PY) benchmarks/train_throughput.py --output_dir benchmarks/results

# The from-scratch NLPCC recipe every measured run shares (10 epochs, CRF slot head, whole utterances).
NLPCC_TRAIN = $(PY) run_train.py --slot_crf \
	--data_dir data/prepared/nlpcc2018 --do_train --do_eval --do_export --num_train_epochs 10 --learning_rate 5e-4 \
	--warmup_ratio 0.1 --cpu_threads $(CPU_THREADS)
NLPCC_SCRATCH = --from_scratch --model_name_or_path ernie-3.0-tiny-nano-v2-zh
# Session context of the measured model: chosen on dev (docs/model-and-context.md).
CONTEXT_TURNS ?= 2
# The nano encoder pretrained as a masked language model on the NLPCC training split's own text (run_pretrain.py),
# from random initialisation, no external text: what the mlm-* runs below start from (~50 min on 2 cores).
NLPCC_MLM = $(NLPCC_PLAIN)-mlm-pretrained
PRETRAIN_EPOCHS ?= 15
PRETRAIN_NLPCC = $(PY) run_pretrain.py --data_dir data/prepared/nlpcc2018 --context_turns $(CONTEXT_TURNS) \
	--num_train_epochs $(PRETRAIN_EPOCHS) --cpu_threads $(CPU_THREADS) --seed 42 --output_dir $(NLPCC_MLM)

# NLPCC 2018 Task 4 runs by name, each in $(NLPCC_PLAIN)-<name> (s42's is $(NLPCC_PLAIN) itself), from scratch:
# s<seed>: the plain recipe; ls0.1[-s<seed>]: with intent label smoothing 0.1; kd5-s<seed>: trained against the
# five runs of NLPCC_TEACHER_RUNS (run_train.py --teacher_dirs), -a0.2- with alpha 0.2, -aug1- with one augmented
# copy of each training utterance labelled by them alone (seed 42 where none is named); mlm-s<seed>: the plain recipe
# fine-tuning the pretrained encoder of NLPCC_MLM (pretrained first when missing). Runs already exported
# are skipped; ~30 min a run on 2 cores (~1 h with augmentation).
NLPCC_PLAIN = output/nlpcc2018-nano-scratch
NLPCC_TEACHER_RUNS = s42 s43 s44 ls0.1 ls0.1-s43
NLPCC_TEACHERS = $(NLPCC_PLAIN) $(addprefix $(NLPCC_PLAIN)-,$(filter-out s42,$(NLPCC_TEACHER_RUNS)))
nlpcc-runs: CORPUS = auto
nlpcc-runs: DATA_DIR = data/prepared/nlpcc2018
nlpcc-runs: data
	for run in $(RUNS); do \
		dir=$(NLPCC_PLAIN)-$$run; [ $$run = s42 ] && dir=$(NLPCC_PLAIN); \
		test -f $$dir/infer_model/inference_config.json && continue; \
		case $$run in *-s4?) seed=$${run##*-s};; s4?) seed=$${run#s};; *) seed=42;; esac; \
		case $$run in ls0.1*) flags="--intent_label_smoothing 0.1";; \
			kd5*) flags="--teacher_dirs $(addsuffix /infer_model,$(NLPCC_TEACHERS))";; *) flags=;; esac; \
		case $$run in *-a0.2-*) flags="$$flags --distill_alpha 0.2";; *-aug1-*) flags="$$flags --augment_copies 1";; esac; \
		init="$(NLPCC_SCRATCH)"; case $$run in mlm*) init="--model_name_or_path $(NLPCC_MLM)"; \
			test -f $(NLPCC_MLM)/config.json || $(PRETRAIN_NLPCC) || exit 1;; esac; \
		$(NLPCC_TRAIN) $$init --context_turns $(CONTEXT_TURNS) --seed $$seed $$flags --output_dir $$dir || exit 1; \
	done

# The shipped NLPCC model (docs/results.md; chosen in docs/model-and-context.md, "Toward 86"): the encoder
# pretrained as a masked language model on the training text, then seed 42 of the plain recipe on it:
# ~1 h 25 min on 2 cores. make train-nlpcc-plain: one run of the plain recipe from random initialisation.
NLPCC_RUN = $(NLPCC_PLAIN)-mlm-s42
# The model the NLPCC targets below compress, benchmark, serve and analyse (default: the shipped one).
NLPCC_MODEL ?= $(NLPCC_RUN)
train-nlpcc:
	$(MAKE) nlpcc-runs RUNS=mlm-s42

train-nlpcc-plain:
	$(MAKE) nlpcc-runs RUNS=s42

# The same recipe with the per-token (softmax) slot head, as measured for the decoding report
# (one utterance at a time, the reference's window of 16).
train-nlpcc-tokenwise: CORPUS = auto
train-nlpcc-tokenwise: DATA_DIR = data/prepared/nlpcc2018
train-nlpcc-tokenwise: data
	$(PY) run_train.py --from_scratch --model_name_or_path ernie-3.0-tiny-nano-v2-zh --max_seq_length 16 \
		--data_dir $(DATA_DIR) --output_dir $(NLPCC_PLAIN)-tokenwise --do_train --do_eval --do_export \
		--num_train_epochs 10 --learning_rate 5e-4 --warmup_ratio 0.1 --cpu_threads $(CPU_THREADS) --seed 42

# Every run of the context table (hours on 2 cores: ~45 min a run, two at a time with
# CPU_THREADS=1), then its report (benchmarks/results/context.*). Runs already done are skipped.
CONTEXT_RUNS = k0-w16-s42 k0-w16-s43 k0-w16-s44 k0-s42 k1-s42 k2-s42 k2-s43 k2-s44
context-runs-nlpcc: CORPUS = auto
context-runs-nlpcc: DATA_DIR = data/prepared/nlpcc2018
context-runs-nlpcc: data
	for run in $(CONTEXT_RUNS); do \
		test -f output/ctx/$$run/infer_model/inference_config.json && continue; \
		k=$${run#k}; k=$${k%%-*}; seed=$${run##*-s}; \
		$(NLPCC_TRAIN) $(NLPCC_SCRATCH) --context_turns $$k $$(case $$run in *-w16-*) echo --max_seq_length 16;; esac) \
			--output_dir output/ctx/$$run --seed $$seed || exit 1; \
	done

context-report-nlpcc: setup
	$(PY) benchmarks/context_report.py --data_dir data/prepared/nlpcc2018 --output_dir benchmarks/results \
		--recipe "K=0, window 16 (before)=output/ctx/k0-w16-s42,output/ctx/k0-w16-s43,output/ctx/k0-w16-s44" \
		--recipe "K=0, whole utterances=output/ctx/k0-s42" --recipe "K=1=output/ctx/k1-s42" \
		--recipe "K=2=output/ctx/k2-s42,output/ctx/k2-s43,output/ctx/k2-s44" \
		--baseline "K=0, window 16 (before)" --chosen "K=$(CONTEXT_TURNS)"

# The candidates toward 86 (docs/model-and-context.md), each paired with the plain recipe's run of the same
# seed: intent label smoothing 0.1 (seeds 42-43), kd5 (seeds 42-44), kd5 with alpha 0.2 (seed 42) and kd5 with
# augmentation (seeds 42-43).
toward86-runs-nlpcc:
	$(MAKE) nlpcc-runs RUNS="$(NLPCC_TEACHER_RUNS) kd5-s42 kd5-s43 kd5-s44 kd5-a0.2-s42 kd5-aug1-s42 kd5-aug1-s43"

toward86-report-nlpcc: setup
	$(PY) benchmarks/context_report.py --data_dir data/prepared/nlpcc2018 --output_dir benchmarks/results/toward86 \
		--recipe "K=2, CRF (make train-nlpcc-plain)=$(NLPCC_PLAIN),$(NLPCC_PLAIN)-s43,$(NLPCC_PLAIN)-s44" \
		--recipe "K=2, CRF + intent label smoothing 0.1=$(NLPCC_PLAIN)-ls0.1,$(NLPCC_PLAIN)-ls0.1-s43" \
		--recipe "$(TOWARD86_CHOSEN)=$(NLPCC_PLAIN)-kd5-s42,$(NLPCC_PLAIN)-kd5-s43,$(NLPCC_PLAIN)-kd5-s44" \
		--recipe "kd5, alpha 0.2=$(NLPCC_PLAIN)-kd5-a0.2-s42" --recipe "kd5 + one augmented copy=$(NLPCC_PLAIN)-kd5-aug1-s42,$(NLPCC_PLAIN)-kd5-aug1-s43" \
		--ensemble "kd5's five teachers as one model (not shippable: five runs per utterance)=$(subst $(space),$(comma),$(NLPCC_TEACHERS))" \
		--baseline "K=2, CRF (make train-nlpcc-plain)" --chosen "$(TOWARD86_CHOSEN)" \
		--chosen_train_flags "--teacher_dirs $(addsuffix /infer_model,$(NLPCC_TEACHERS))"
TOWARD86_CHOSEN = K=2, CRF + distilled from kd5's five teachers (make train-nlpcc)

# Masked-LM pretraining on the training text (NLPCC_MLM), fine-tuned with the plain recipe (seeds 42-44; `make nlpcc-runs
# RUNS="mlm-s42 mlm-s43 mlm-s44"` first), beside those of the plain recipe that are trained; seeds not trained are left out.
mlm-report-nlpcc: setup
	$(PY) benchmarks/context_report.py --data_dir data/prepared/nlpcc2018 --output_dir benchmarks/results/toward86/mlm \
		--recipe "K=2, CRF (make train-nlpcc-plain)=$(NLPCC_PLAIN),$(NLPCC_PLAIN)-s43,$(NLPCC_PLAIN)-s44" \
		--recipe "$(MLM_RECIPE)=$(NLPCC_PLAIN)-mlm-s42,$(NLPCC_PLAIN)-mlm-s43,$(NLPCC_PLAIN)-mlm-s44" \
		--chosen "$(MLM_RECIPE)" --skip_missing
	cp $(NLPCC_MLM)/pretrain_results.json benchmarks/results/toward86/mlm/pretrain_results.json
MLM_RECIPE = K=2, CRF, fine-tuned from the masked-LM encoder ($(PRETRAIN_EPOCHS) epochs of pretraining)

# The width-0.5 stage compression after compression (docs/compression.md): the shipped model compressed three
# times with the shipped recipe (make compress-nlpcc WIDTH_MULT=0.5 COMPRESS_SEED=42, 43, 44 first), then with
# PaddleNLP's losses (QAT_DISTILL_ALPHA=1 DYNABERT_UTTERANCE_TOKENS=false) over one and two epochs (COMPRESS_EPOCHS=2),
# and the width-0.75 compression of each recipe (make compress-nlpcc); compressions not there are left out. The
# PaddleNLP-loss runs and the two output/exp-* steps between them (QAT's soft targets alone, then with slots on the
# utterance's tokens) evaluated every 100 of 267 steps, before compression.py spaced its evaluations to the end.
COMPRESSION_RUNS_05 = $(foreach s,42 43 44,--run "shipped recipe, compression seed $(s)=$(call compress_dir,$(NLPCC_RUN),0.5,2e-4,1,$(s),0.5,true)") \
	--run "QAT with soft targets, evaluated every 100 steps, seed 42=output/exp-w05-kd-save100-s42" \
	--run "+ slots on utterance tokens, evaluated every 100 steps, seed 42=output/exp-w05-kd-utt-save100-s42" \
	$(foreach e,1 2,$(foreach s,42 43 44,--run "PaddleNLP's losses, $(e) + $(e) epochs, compression seed $(s)=$\
	$(call compress_dir,$(NLPCC_RUN),0.5,2e-4,$(e),$(s))"))
compression-runs-nlpcc: setup
	$(PY) benchmarks/compression_runs.py --data_dir data/prepared/nlpcc2018 --output_dir benchmarks/results/toward86/mlm \
		--skip_missing $(COMPRESSION_RUNS_05)
	$(PY) benchmarks/compression_runs.py --data_dir data/prepared/nlpcc2018 --output_dir benchmarks/results/toward86/mlm/width0.75 \
		--skip_missing --run "shipped recipe, compression seed 42=$(call compress_dir,$(NLPCC_RUN),0.75,2e-4,1,42,0.5,true)" \
		--run "PaddleNLP's losses, compression seed 42=$(call compress_dir,$(NLPCC_RUN),0.75,2e-4,1,42)"

# The same for the candidates toward 86, compressed with PaddleNLP's losses: the plain recipe's model at both learning
# rates and the distilled students (make compress-nlpcc WIDTH_MULT=0.5 NLPCC_MODEL=output/nlpcc2018-nano-scratch-kd5-sNN
# QAT_DISTILL_ALPHA=1 DYNABERT_UTTERANCE_TOKENS=false first), and the kd5 student's width-0.75 compression.
TOWARD86_COMPRESSION_RUNS = --run "plain recipe, seed 42, lr 5e-5=$(NLPCC_PLAIN)-compress-width0.5" \
	--run "plain recipe, seed 42, lr 2e-4=$(NLPCC_PLAIN)-compress-width0.5-lr2e-4" \
	$(foreach s,42 43 44,--run "kd5 student, seed $(s), lr 2e-4=$(NLPCC_PLAIN)-kd5-s$(s)-compress-width0.5-lr2e-4") \
	--run "kd5 + augmentation student, seed 42, lr 2e-4=$(NLPCC_PLAIN)-kd5-aug1-s42-compress-width0.5-lr2e-4"
toward86-compression-runs-nlpcc: setup
	$(PY) benchmarks/compression_runs.py --data_dir data/prepared/nlpcc2018 --output_dir benchmarks/results/toward86 \
		--skip_missing $(TOWARD86_COMPRESSION_RUNS)
	$(PY) benchmarks/compression_runs.py --data_dir data/prepared/nlpcc2018 --output_dir benchmarks/results/toward86/width0.75 \
		--skip_missing --run "kd5 student, seed 42, lr 2e-4=$(NLPCC_PLAIN)-kd5-s42-compress-lr2e-4"

# Decoding and confidence report (greedy vs constrained vs CRF, calibration, abstaining, decoding
# time in Python and C++): of the demo model, and of the two NLPCC models (after train-nlpcc and
# train-nlpcc-tokenwise; benchmarks/results/decoding.*).
decoding-report: setup cpp
	$(PY) benchmarks/decoding_report.py --model_dir $(OUTPUT_DIR)/infer_model --data_dir $(DATA_DIR) --output_dir $(OUTPUT_DIR)-decoding

decoding-report-nlpcc: setup cpp
	$(PY) benchmarks/decoding_report.py --model_dir $(NLPCC_PLAIN)-tokenwise/infer_model \
		--crf_model_dir $(NLPCC_PLAIN)/infer_model --data_dir data/prepared/nlpcc2018 --output_dir benchmarks/results

# The same report on the measured CRF model alone (constrained vs greedy on its logits, calibration,
# abstaining; its timing line: decoding in numpy, through ctypes and in C++).
decoding-report-nlpcc-crf: setup cpp
	$(PY) benchmarks/decoding_report.py --model_dir $(NLPCC_MODEL)/infer_model --data_dir data/prepared/nlpcc2018 \
		--output_dir benchmarks/results/decoding-crf

# Compression (vocabulary pruning + DynaBERT + QAT + int8 embeddings) of the demo model, and of
# the measured NLPCC model (docs/compression.md's table: DynaBERT width 0.75; WIDTH_MULT=0.5
# gives the smaller, faster stages of docs/performance.md, in a directory of their own).
compress: setup
	$(PY) run_train.py --model_name_or_path $(OUTPUT_DIR) --data_dir $(DATA_DIR) --output_dir $(OUTPUT_DIR)-compress \
		--do_compress --strategy 'dynabert+qat+embeddings' --prune_embeddings --max_vocab_size 300 \
		--num_train_epochs 1 --learning_rate 5e-5 --save_steps 20 --cpu_threads $(CPU_THREADS) --seed 42

WIDTH_MULT ?= 0.75
# NLPCC_MODEL: the trained run to compress; COMPRESS_LR: the learning rate of the DynaBERT and QAT epochs
# (2e-4 held the width-0.5 stage better than 5e-5: docs/compression.md); COMPRESS_SEED: their data order and dropout
# (another seed is another compression of the same model); COMPRESS_EPOCHS: epochs of DynaBERT, and of QAT (PaddleNLP's
# compress API runs both for --num_train_epochs). The output directory names the width when not 0.75, the learning rate
# when not 5e-5, the epochs when not 1, the seed when not 42 and QAT_DISTILL_ALPHA when not 1.
# QAT_DISTILL_ALPHA: weight of the gold labels in QAT's loss; the rest learns the compressed model's own soft targets
# (run_train.py --qat_distill_alpha; 1 = gold labels alone). DYNABERT_UTTERANCE_TOKENS=true: DynaBERT distils the slot
# logits on the utterance's tokens only (run_train.py --dynabert_utterance_tokens; directory suffix -utt).
COMPRESS_LR ?= 2e-4
COMPRESS_SEED ?= 42
COMPRESS_EPOCHS ?= 1
QAT_DISTILL_ALPHA ?= 0.5
DYNABERT_UTTERANCE_TOKENS ?= true
# $(call compress_dir,MODEL,WIDTH,LR,EPOCHS,SEED[,QAT_DISTILL_ALPHA[,DYNABERT_UTTERANCE_TOKENS]]): the one place
# compression directories are named
compress_dir = $(1)-compress$(if $(filter-out 0.75,$(2)),-width$(2))$(if $(filter-out 5e-5,$(3)),-lr$(3))$(if $(filter-out 1,$(4)),-ep$(4))$\
	$(if $(filter-out 42,$(5)),-seed$(5))$(if $(filter-out 1,$(6)),-qatkd$(6))$(if $(filter true,$(7)),-utt)
NLPCC_COMPRESS_DIR = $(call compress_dir,$(NLPCC_MODEL),$(WIDTH_MULT),$(COMPRESS_LR),$(COMPRESS_EPOCHS),$(COMPRESS_SEED),$\
	$(QAT_DISTILL_ALPHA),$(DYNABERT_UTTERANCE_TOKENS))
# what the targets below read: the stages of the width-0.75 and the width-0.5 compression of NLPCC_MODEL
NLPCC_STAGES = $(call compress_dir,$(NLPCC_MODEL),0.75,$(COMPRESS_LR),$(COMPRESS_EPOCHS),42,$(QAT_DISTILL_ALPHA),$(DYNABERT_UTTERANCE_TOKENS))/compress/stages
NLPCC_STAGES_05 = $(call compress_dir,$(NLPCC_MODEL),0.5,$(COMPRESS_LR),$(COMPRESS_EPOCHS),42,$(QAT_DISTILL_ALPHA),$(DYNABERT_UTTERANCE_TOKENS))/compress/stages
compress-nlpcc: setup
	$(PY) run_train.py --model_name_or_path $(NLPCC_MODEL) --data_dir data/prepared/nlpcc2018 \
		--output_dir $(NLPCC_COMPRESS_DIR) --do_compress --strategy 'dynabert+qat+embeddings' --width_mult_list $(WIDTH_MULT) \
		--prune_embeddings --max_vocab_size 2000 --num_train_epochs $(COMPRESS_EPOCHS) --learning_rate $(COMPRESS_LR) --save_steps 100 \
		--cpu_threads $(CPU_THREADS) --seed $(COMPRESS_SEED) --qat_distill_alpha $(QAT_DISTILL_ALPHA) \
		--dynabert_utterance_tokens $(DYNABERT_UTTERANCE_TOKENS)

# Inference benchmark: first this CPU's ceiling (benchmarks/ceiling.py: GEMM peaks per precision, the
# work per utterance), then stage x backend x threads (benchmarks/inference.py; JSON, Markdown, PNG,
# % of peak from the ceiling): of the demo compression run, and of the NLPCC one (docs/performance.md's
# figures, written to benchmarks/results/).
DISTILLED := $(wildcard output/nlpcc2018-distill/distilled/infer_model)
benchmark: setup
	$(PY) benchmarks/ceiling.py --stages_dir $(OUTPUT_DIR)-compress/compress/stages --test_file $(DATA_DIR)/test.txt \
		--output_dir $(OUTPUT_DIR)-benchmark
	$(PY) benchmarks/inference.py --stages_dir $(OUTPUT_DIR)-compress/compress/stages --test_file $(DATA_DIR)/test.txt \
		--output_dir $(OUTPUT_DIR)-benchmark

benchmark-nlpcc: setup
	$(PY) benchmarks/ceiling.py --stages_dir $(NLPCC_STAGES) \
		--test_file data/prepared/nlpcc2018/test.txt --output_dir benchmarks/results $(if $(DISTILLED),--extra_stage $(DISTILLED))
	$(PY) benchmarks/inference.py --stages_dir $(NLPCC_STAGES) \
		--test_file data/prepared/nlpcc2018/test.txt --output_dir benchmarks/results $(if $(DISTILLED),--extra_stage $(DISTILLED))

# docs/performance.md's target check: the fp32 baseline (FastDeploy's ONNX Runtime) against the compressed QAT
# stages (width 0.75, and 0.5 after `make compress-nlpcc WIDTH_MULT=0.5`) on ONNX Runtime, 1 and 2
# threads, in 3 rounds that take the cells in turn (benchmarks/results/targets/).
QAT_WIDTH_05 := $(wildcard $(NLPCC_STAGES_05)/width_mult_0.5-int8)
benchmark-targets-nlpcc: setup
	$(PY) benchmarks/inference.py --stages_dir $(NLPCC_STAGES) \
		--test_file data/prepared/nlpcc2018/test.txt --output_dir benchmarks/results/targets \
		--only_stages fp32,width_mult_0.75-int8,width_mult_0.5-int8 $(if $(QAT_WIDTH_05),--extra_stage $(QAT_WIDTH_05)) \
		--backends fastdeploy-ort,onnxruntime,onnxruntime-int8 --threads 1,2 --rounds 3

# The batch-1 target alone, in 5 rounds: the fp32 model and the width-0.5 QAT stage on FastDeploy-ORT
# and onnxruntime-int8, 1 thread (5 min).
benchmark-targets-batch1-nlpcc: setup
	$(PY) benchmarks/inference.py --stages_dir $(NLPCC_STAGES_05) \
		--test_file data/prepared/nlpcc2018/test.txt --output_dir benchmarks/results/targets/batch1 \
		--only_stages fp32,width_mult_0.5-int8 --backends fastdeploy-ort,onnxruntime-int8 --threads 1 --rounds 5

# The SLU service (serve.py: FastAPI on uvicorn) on an exported directory and a backend of backends.py.
# Options of serve.py (batching, limits, sessions) go in SERVE_FLAGS, e.g. SERVE_FLAGS="--max_wait_ms 2".
# serve.py's default, backends.FRONT_END_BACKEND
BACKEND ?= onnxruntime
HOST ?= 127.0.0.1
PORT ?= 8000
serve: MODEL_DIR = $(OUTPUT_DIR)/infer_model
serve: setup
	$(PY) serve.py --model_dir $(MODEL_DIR) --backend $(BACKEND) --host $(HOST) --port $(PORT) --cpu_threads $(CPU_THREADS) $(SERVE_FLAGS)

# The service with $(WORKERS) worker processes sharing their sessions through a local Redis, started here with
# its data in output/redis/ (sessions.redis_server_command) and stopped with the service (docs/service.md#sessions).
WORKERS ?= 2
REDIS_PORT ?= 6379
serve-redis: MODEL_DIR = $(OUTPUT_DIR)/infer_model
serve-redis: setup
	mkdir -p output/redis
	$$($(PY) -c 'import sessions; print(" ".join(sessions.redis_server_command($(REDIS_PORT), "output/redis")))') & \
	redis=$$!; trap "kill $$redis" EXIT; \
	$(PY) serve.py --model_dir $(MODEL_DIR) --backend $(BACKEND) --host $(HOST) --port $(PORT) --cpu_threads 1 \
		--workers $(WORKERS) --session_store redis://127.0.0.1:$(REDIS_PORT)/0 $(SERVE_FLAGS)

# Load test of the service (benchmarks/results/serve_load_<backend>.*) on the measured NLPCC model, 1 model thread per
# worker: on integer kernels (onnxruntime-int8, the fastest; with session requests, 1 worker in memory against 2 workers
# sharing a local Redis) and on fp32 kernels (onnxruntime, serve.py's default); with the width-0.5 QAT stage
# (make compress-nlpcc WIDTH_MULT=0.5), on it too (benchmarks/results/width0.5_qat/).
SERVE_LOAD = $(PY) benchmarks/serve_load.py --test_file data/prepared/nlpcc2018/test.txt --requests 2000
serve-load-nlpcc: setup
	$(SERVE_LOAD) --model_dir $(NLPCC_MODEL)/infer_model --output_dir benchmarks/results --backend onnxruntime-int8 \
		--session_modes
	$(SERVE_LOAD) --model_dir $(NLPCC_MODEL)/infer_model --output_dir benchmarks/results --backend onnxruntime
	$(if $(QAT_WIDTH_05),$(SERVE_LOAD) --model_dir $(QAT_WIDTH_05) --output_dir benchmarks/results/width0.5_qat --backend onnxruntime-int8)

# Every front end (Python API, run_eval.py, service, C++ demo) beside its engine, same model and turns, 3 rounds
# (benchmarks/results/front_ends.*; docs/performance.md#front-ends).
# With the width-0.5 QAT stage (make compress-nlpcc WIDTH_MULT=0.5), the same on it: onnxruntime-int8 and Paddle
# Inference's oneDNN int8 (benchmarks/results/width0.5_qat/).
QAT_FRONT_END_BACKENDS = onnxruntime-int8,paddle-inference
front-ends-nlpcc: setup cpp
	$(PY) benchmarks/front_ends.py --model_dir $(NLPCC_MODEL)/infer_model --test_file data/prepared/nlpcc2018/test.txt \
		--output_dir benchmarks/results
	$(if $(QAT_WIDTH_05),$(PY) benchmarks/front_ends.py --model_dir $(QAT_WIDTH_05) --test_file data/prepared/nlpcc2018/test.txt \
		--backends $(QAT_FRONT_END_BACKENDS) --output_dir benchmarks/results/width0.5_qat)

# Why Paddle Inference is slower than ONNX Runtime at batch 1: its settings, at batch 1 and 32
# (benchmarks/results/paddle_inference_settings.*; docs/performance.md#paddle-inference-at-batch-1).
paddle-inference-settings-nlpcc: setup
	$(PY) benchmarks/paddle_inference_settings.py --model_dir $(NLPCC_MODEL)/infer_model \
		--test_file data/prepared/nlpcc2018/test.txt --output_dir benchmarks/results
	$(if $(QAT_WIDTH_05),$(PY) benchmarks/paddle_inference_settings.py --model_dir $(QAT_WIDTH_05) \
		--test_file data/prepared/nlpcc2018/test.txt --output_dir benchmarks/results/width0.5_qat)

# Whether an answer depends on the rest of its batch on onnxruntime-int8 (one call per batch against each
# row alone, as the backend runs), and what rows alone cost (docs/reliability.md).
batch-independence-nlpcc: setup
	$(PY) benchmarks/batch_independence.py --model_dir $(NLPCC_MODEL)/infer_model \
		--test_file data/prepared/nlpcc2018/test.txt --output_dir benchmarks/results

# Your own data (docs/data.md#your-own-data): test accuracy by training-set size, from scratch, on the
# synthetic vehicle-control domain (offline) and on NLPCC 2018 subsets.
training-size: setup
	$(PY) data/prepare_data.py --synthetic --synthetic_domain vehicle --output_dir data/prepared/vehicle
	$(PY) benchmarks/training_size.py --data_dir data/prepared/vehicle --name vehicle --sizes 100 300 1000

training-size-nlpcc: CORPUS = auto
training-size-nlpcc: DATA_DIR = data/prepared/nlpcc2018
training-size-nlpcc: data
	$(PY) benchmarks/training_size.py --data_dir data/prepared/nlpcc2018 --name nlpcc2018 --sizes 100 300 1000 3000

# Adding an intent to a trained model: hold one out, train from scratch, add it back by fine-tuning;
# compared with the from-scratch run of train-nlpcc on all labels.
HOLD_OUT ?= phone_call.make_a_phone_call
label-change-nlpcc: CORPUS = auto
label-change-nlpcc: DATA_DIR = data/prepared/nlpcc2018
label-change-nlpcc: data
	$(PY) benchmarks/label_change.py --data_dir data/prepared/nlpcc2018 --hold_out $(HOLD_OUT) \
		--baseline_dir $(NLPCC_PLAIN) --work_dir output/label-change --output_dir benchmarks/results

# Slot values (docs/decoding.md#slot-values): resolution on the gold slots of dev and test, the ASR-like check,
# a 100,000-entry catalogue's speed; the complete-catalogue stand-in goes to output/ (corpus values stay out of git).
value-resolution-nlpcc: CORPUS = auto
value-resolution-nlpcc: DATA_DIR = data/prepared/nlpcc2018
value-resolution-nlpcc: data
	$(PY) benchmarks/value_resolution.py --data_dir data/prepared/nlpcc2018 --name nlpcc2018 --output_dir benchmarks/results \
		--full_catalogue_file output/nlpcc2018-full-values-catalogue.jsonl

# The notebook executed top to bottom and saved with its outputs (commit it after a change).
notebook: setup
	$(PY) notebooks/execute.py

# Error analysis of NLPCC_MODEL on the test split (output/nlpcc2018-analysis/: analysis.json, analysis.md,
# confusion.png, errors.png), against COMPARE_MODEL when it is there: by default the plain recipe's model,
# which the shipped one was distilled beside; docs/evaluation.md's first table compared the plain model with
# the context-free recipe (COMPARE_MODEL=output/ctx/k0-w16-s42/infer_model, from context-runs-nlpcc). The
# outputs quote test utterances: keep them out of the repository (docs/evaluation.md shows two plots,
# copied to benchmarks/results/analysis_*.png).
COMPARE_MODEL ?= $(NLPCC_PLAIN)/infer_model
analysis-nlpcc: setup
	$(PY) run_eval.py --model_dir $(NLPCC_MODEL)/infer_model --eval_file data/prepared/nlpcc2018/test.txt \
		--analysis_dir output/nlpcc2018-analysis $(if $(wildcard $(COMPARE_MODEL)),--compare_model_dir $(COMPARE_MODEL)) > /dev/null

# C++ demo (deploy/cpp) against the OpenVINO C++ runtime of the openvino pip wheel and the ONNX Runtime
# library of the onnxruntime pip wheel (its C API headers are vendored in deploy/cpp/third_party/onnxruntime).
cpp: setup
	cmake -S deploy/cpp -B build/cpp -DOpenVINO_DIR=$$($(PY) -c 'import openvino, os; print(os.path.join(os.path.dirname(openvino.__file__), "cmake"))') \
		-DONNXRUNTIME_LIB=$$(ls $$($(PY) -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')/capi/libonnxruntime.so.1.*)
	cmake --build build/cpp -j2

# Distillation into a Bi-LSTM student (run_distill.py), of the demo model and of the NLPCC one.
distill: setup
	$(PY) run_distill.py --teacher_dir $(OUTPUT_DIR)/infer_model --data_dir $(DATA_DIR) --output_dir $(OUTPUT_DIR)-distill --cpu_threads $(CPU_THREADS) \
		$(if $(wildcard $(OUTPUT_DIR)-compress/compress/stages/width_mult_0.75-quant_emb),--compressed_dir $(OUTPUT_DIR)-compress/compress/stages/width_mult_0.75-quant_emb)

distill-nlpcc: setup
	$(PY) run_distill.py --teacher_dir $(NLPCC_STAGES)/fp32 --data_dir data/prepared/nlpcc2018 \
		--output_dir output/nlpcc2018-distill --teacher_logits_file output/nlpcc2018-teacher-logits.npz \
		--compressed_dir $(NLPCC_STAGES)/width_mult_0.75-quant_emb --cpu_threads $(CPU_THREADS) $(DISTILL_FLAGS)

# Paddle Lite (.nb) model for the Android app, converted and verified on x86 against Paddle Inference.
# MODEL_DIR: any exported stage (default: the demo's final compressed stage).
MODEL_DIR ?= $(OUTPUT_DIR)-compress/compress/stages/width_mult_0.75-int8-quant_emb
$(LITE_VENV)/.installed: deploy/android/requirements-lite.txt
	@test -n "$(LITE_PYTHON)" || { echo "Python 3.7 not found (paddlelite 2.12 needs it): pyenv install 3.7, or pass LITE_PYTHON=/path/to/python3.7"; exit 1; }
	$(LITE_PYTHON) -m venv $(LITE_VENV)
	$(LITE_VENV)/bin/python -m pip install --quiet -r deploy/android/requirements-lite.txt
	touch $@

lite-setup: $(LITE_VENV)/.installed

android-model: setup lite-setup
	$(PY) deploy/android/convert.py --model_dir $(MODEL_DIR) --output_dir output/android-model --verify_file $(DATA_DIR)/test.txt

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests -q -p no:cacheprovider --durations=12; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

clean:
	rm -rf output data/prepared build
