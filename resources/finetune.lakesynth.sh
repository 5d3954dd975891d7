#!/usr/bin/env bash
# The `finetune` task of the lakesynth job: an ai_runtime_task runs this on a serverless GPU node. It trains on
# the chat examples the format task wrote. The job's parameters (catalog, schema, volume, base_model) are found
# by lakesynth.training.ai_runtime through this script's path; the training libraries come from the job's `finetune`
# environment. `lakesynth run` reads the `--set` lines below too (fixed settings of this task).
set -euo pipefail
exec python -m lakesynth.training.ai_runtime --command "$0"
