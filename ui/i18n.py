"""English and Chinese text of the panel.

Static text (labels, help, headings) goes through gr.I18n: the browser's language picks
the table, and the footer's Settings → Language switches it at run time. Text made by the
server (status lines) follows the browser's Accept-Language through `say()`.
"""

from __future__ import annotations

import gradio as gr

from core.config import GenerationConfig, MergeConfig, PrepareConfig, TrainConfig

EN: dict[str, str] = {
    "title": "# QLoRA Studio\nFine-tune a language model on your own instruction data: **1 Data → 2 Train → 3 Merge → 4 Chat**.",
    "tab_data": "1 · Data", "tab_train": "2 · Train", "tab_merge": "3 · Merge", "tab_chat": "4 · Chat", "tab_runs": "Runs",
    # data
    "data_intro": "Upload an instruction file (JSON lines, JSON or CSV with instruction / input / output), or try the bundled Chinese sample. The preview shows the exact text the model will learn from.",
    "upload": "Upload a data file", "source": "Data file", "use_sample": "Use the sample data",
    "layout": "Detected layout", "preview": "Preview (template applied)", "preview_btn": "Refresh preview",
    "save_dataset": "Save dataset", "stats": "Statistics", "histogram": "Token length of each row",
    "dataset_name": "Dataset name (optional)",
    # train
    "train_intro": "Pick a model and a prepared dataset, choose a preset, press Start. Training runs in the background: you can close the browser and come back.",
    "model": "Model", "dataset": "Prepared dataset", "preset": "Preset", "run_name": "Run name (optional)",
    "advanced": "Advanced settings", "wandb_key": "wandb API key (only passed to the run, never saved)",
    "start": "Start training", "stop": "Stop (keeps the adapter)", "resume": "Resume",
    "run_shown": "Run shown", "progress": "Progress", "loss_chart": "Loss", "gpu": "GPU and memory", "log": "Run log (last lines)",
    "refresh": "Refresh",
    "no_gpu_note": "No GPU on this machine: training runs as plain LoRA in float32, so 4-bit loading, Liger kernels and activation offloading (greyed out) do not apply.",
    # merge
    "merge_intro": "Fold a finished run's adapter into its base model to get a standalone model you can share or chat with.",
    "run": "Run", "base": "Base model (empty = the one the run was trained on)", "out": "Name of the merged model (a folder in workspace/merged)",
    "dtype": "Weight format", "merge_btn": "Merge", "merge_result": "Result",
    # chat
    "chat_intro": "Talk to the merged model, a run's adapter on its base, or the base model. Pick a second model to compare their answers side by side.",
    "chat_model": "Model", "compare_with": "Compare with (optional)", "message": "Message",
    "send": "Send", "clear": "Clear", "sampling": "Sampling settings", "release": "Unload models",
    "chat_a": "Answer", "chat_b": "Comparison", "stop_reply": "Stop the reply",
    # runs
    "runs_intro": "Every training run in this workspace. Select a row, then open it.",
    "open_train": "Show in Train", "open_merge": "Merge this run", "open_chat": "Chat with this run",
    "selected": "Selected run",
}

ZH: dict[str, str] = {
    "title": "# QLoRA Studio\n用你自己的指令数据微调大语言模型：**1 数据 → 2 训练 → 3 合并 → 4 对话**。",
    "tab_data": "1 · 数据", "tab_train": "2 · 训练", "tab_merge": "3 · 合并", "tab_chat": "4 · 对话", "tab_runs": "训练记录",
    "data_intro": "上传指令数据文件（JSON Lines、JSON 或 CSV，包含 instruction / input / output 字段），也可以先用自带的中文示例数据试一试。预览里显示的就是模型训练时看到的原文。",
    "upload": "上传数据文件", "source": "数据文件", "use_sample": "使用示例数据",
    "layout": "识别出的数据格式", "preview": "预览（已套用模板）", "preview_btn": "刷新预览",
    "save_dataset": "保存数据集", "stats": "统计信息", "histogram": "每条数据的 token 长度分布",
    "dataset_name": "数据集名称（可不填）",
    "train_intro": "选择模型和处理好的数据集，选一个预设，点击“开始训练”。训练在后台进行：关掉浏览器也不会中断，回来即可继续查看。",
    "model": "模型", "dataset": "数据集", "preset": "预设", "run_name": "训练名称（可不填）",
    "advanced": "高级设置", "wandb_key": "wandb API 密钥（只交给本次训练使用，不会保存）",
    "start": "开始训练", "stop": "停止（保留已训练的适配器）", "resume": "继续训练",
    "run_shown": "当前查看的训练", "progress": "进度", "loss_chart": "损失曲线", "gpu": "显卡与内存", "log": "训练日志（最后几行）",
    "refresh": "刷新",
    "no_gpu_note": "这台机器没有显卡：训练以 float32 的普通 LoRA 进行，所以 4 位加载、Liger 算子和激活值卸载（已置灰）都不起作用。",
    "merge_intro": "把训练好的适配器合并进基础模型，得到一个可以单独使用、分享或对话的完整模型。",
    "run": "训练记录", "base": "基础模型（留空 = 训练时用的模型）", "out": "合并后模型的名称（workspace/merged 里的文件夹）",
    "dtype": "权重精度", "merge_btn": "开始合并", "merge_result": "合并结果",
    "chat_intro": "和合并后的模型、带适配器的基础模型或原始基础模型对话。再选一个模型，就能并排比较两者的回答。",
    "chat_model": "模型", "compare_with": "对比模型（可不选）", "message": "输入消息",
    "send": "发送", "clear": "清空", "sampling": "生成参数", "release": "卸载模型",
    "chat_a": "回答", "chat_b": "对比回答", "stop_reply": "停止回答",
    "runs_intro": "本工作区里的所有训练。选中一行后，可以查看曲线、合并或对话。",
    "open_train": "在训练页查看", "open_merge": "合并这次训练", "open_chat": "和它对话",
    "selected": "选中的训练",
}

# Help shown under each setting, in Chinese, by settings class (a field name can mean different
# things in two classes); the English comes from the dataclasses themselves.
HELP_ZH: dict[str, dict[str, str]] = {
    "PrepareConfig": {
        "input": "数据文件：JSON Lines、JSON 数组或 CSV。",
        "out": "写入 train.jsonl、eval.jsonl 和 manifest.json 的文件夹（不能已经存在）。",
        "sample": "随机抽取多少条（0 = 全部）。原教程抽取 1000 条。",
        "seed": "随机种子：种子相同，抽到的就是同样的数据。",
        "template": "提示模板：auto（模型有自带的对话模板就用它，否则用 seed）、seed（原教程的 ### Human: … ### Assistant: …）、chat（模型自带的对话模板），或自定义，用 {instruction}、{input}、{output} 占位。",
        "eval_ratio": "留出多少比例的数据用来评估（0 到 0.5）。",
        "model": "用哪个模型的分词器统计 token 数（chat 模板也用这个模型自带的对话模板）。",
        "format": "数据格式：auto（自动识别）、alpaca、sharegpt、messages 或 text。",
        "max_seq_length": "最长序列（token 数），更长的数据会被截断；统计信息会告诉你有多少条会被截断。",
        "skip_bad": "跳过格式有误的行并计数，而不是在第一处错误就停下。",
        "trust_remote_code": "运行模型自带的代码。只对你信任的模型打开。",
    },
    "TrainConfig": {
        "model": "基础模型：default（内置的 SmolLM2-135M-Instruct）、本地文件夹或 Hugging Face 模型名。",
        "data": "处理好的数据集文件夹（在“数据”页或用 python -m core prepare 生成）。",
        "out": "要新建的训练文件夹。",
        "preset": "设置的起点：default（快，推荐）或 tutorial（原教程的配方）。",
        "quantization": "以 4 位 NF4 量化加载基础模型（QLoRA），或不量化（none，普通 LoRA）。",
        "double_quant": "对 4 位量化的缩放系数再量化一次，每个参数约省 0.4 位。",
        "compute_dtype": "计算精度：auto（显卡支持时用 bf16，CPU 上用 fp32）、bfloat16、float16 或 float32。",
        "trust_remote_code": "运行模型自带的代码。只对你信任的模型打开。",
        "lora_r": "LoRA 秩：越大能学到的越多，显存占用也越多。",
        "lora_alpha": "LoRA 缩放系数 alpha，更新量按 alpha / r 缩放。",
        "lora_dropout": "LoRA 输入的 dropout，防止过拟合（0 到 0.5）。",
        "target_modules": "加 LoRA 的层：default（模型常用的层，Llama 为 q_proj 和 v_proj）、all-linear，或用逗号分隔的层名。",
        "learning_rate": "每次更新的步子有多大。不拼接时 LoRA 通常用 2e-4；默认预设用 3.4e-4，因为拼接后每次更新包含的 token 约多 1.7 倍。",
        "lr_scheduler": "学习率在训练过程中如何变化。",
        "warmup_ratio": "前多少比例的步数里，学习率从 0 逐渐升高。",
        "batch_size": "每块显卡每一步处理的序列数。显存不够时调小它。",
        "grad_accum": "累积多少步的梯度再更新一次：实际批大小 = 批大小 × 这个数。",
        "max_steps": "更新多少次（0 = 改用轮数 epochs）。",
        "epochs": "把数据完整过几遍，只在最大步数为 0 时使用。",
        "max_seq_length": "最长序列（token 数），更长的数据会被截断。",
        "packing": "把几条短数据拼进同一条序列（不用填充，每条数据仍只看到它自己）。",
        "gradient_checkpointing": "反向传播时重算激活值：显存省很多，速度慢约 30%。",
        "liger_kernels": "装有 liger-kernel 时使用 Liger 的融合 GPU 算子（RMSNorm、SwiGLU、RoPE）：更省显存、更快。仅限 GPU。",
        "offload_activations": "把反向传播要用的激活值放在内存（CPU）里而不是显存里（仅限 GPU）：一次能放下更多行。拷贝与计算同时进行，并在需要之前提前取回。",
        "loss_on": "只在回答部分计算损失（response），还是在全文上计算（all）。",
        "optim": "优化器（transformers 支持的名字，例如 adamw_torch、paged_adamw_8bit）。",
        "max_grad_norm": "梯度裁剪的范数上限（0 = 不裁剪）。",
        "logging_steps": "每隔多少步记录一次指标。",
        "save_steps": "每隔多少步保存一次检查点（0 = 只在最后保存）。",
        "eval_steps": "每隔多少步计算一次评估损失（0 = 不计算；需要留出评估数据）。",
        "seed": "随机种子：决定 LoRA 的初始权重和数据的顺序，相同的种子可以复现结果。",
        "report_to": "同时记录到：none、wandb 或 tensorboard。",
        "wandb_project": "wandb 项目名。",
        "resume": "从这个训练文件夹里最近的完整检查点继续训练。",
    },
    "MergeConfig": {
        "compare": "在内存放得下两份模型时，用一段探测文本对比合并后的模型与“基础模型 + 适配器”的回答（会短暂占用两倍模型大小的内存）。",
        "adapter": "训练得到的适配器文件夹（RUN/adapter）。",
        "out": "写入合并后模型的文件夹（不能已经存在）。",
        "base": "基础模型；留空 = 训练时用的模型。",
        "dtype": "合并后权重的精度。",
        "trust_remote_code": "运行模型自带的代码。只对你信任的模型打开。",
    },
    "GenerationConfig": {
        "precision": "模型在显卡上的加载方式：auto（权重和上下文放得下就用 16 位，否则 8 位，再不行 4 位）、16bit、8bit、4bit（NF4），或 int4（torchao 的 int4 仅权重量化：和 4bit 差不多小，编译后更快；需要安装 torchao）。CPU 上不起作用。",
        "system": "系统提示词：给助手的长期指示。",
        "temperature": "随机程度：0 表示总是选最可能的词。",
        "top_p": "只从累计概率达到这个比例的候选词里抽样。",
        "top_k": "只从最可能的这么多个词里抽样（0 = 不限制）。",
        "repetition_penalty": "大于 1 时减少重复。",
        "max_new_tokens": "回答最多多少个 token。",
    },
}

# Field labels: the setting's name in words.
LABEL_EN: dict[str, str] = {
    "sample": "Rows to sample", "seed": "Random seed", "template": "Template", "eval_ratio": "Eval share",
    "format": "Layout", "max_seq_length": "Max sequence length", "skip_bad": "Skip broken rows",
    "trust_remote_code": "Trust remote code", "compare": "Compare with base + adapter", "quantization": "Quantization", "double_quant": "Double quantization",
    "compute_dtype": "Compute dtype", "lora_r": "LoRA rank (r)", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "target_modules": "Target modules", "learning_rate": "Learning rate", "lr_scheduler": "LR schedule",
    "warmup_ratio": "Warmup share", "batch_size": "Batch size", "grad_accum": "Gradient accumulation",
    "max_steps": "Max steps", "epochs": "Epochs", "packing": "Packing", "gradient_checkpointing": "Gradient checkpointing",
    "liger_kernels": "Liger fused kernels", "offload_activations": "Offload activations to CPU",
    "loss_on": "Loss on", "optim": "Optimizer", "max_grad_norm": "Max grad norm", "logging_steps": "Log every N steps",
    "save_steps": "Save every N steps", "eval_steps": "Eval every N steps", "report_to": "Report to",
    "wandb_project": "wandb project", "system": "System prompt", "temperature": "Temperature", "top_p": "Top-p",
    "top_k": "Top-k", "precision": "Precision", "repetition_penalty": "Repetition penalty", "max_new_tokens": "Max new tokens",
}
LABEL_ZH: dict[str, str] = {
    "sample": "抽样条数", "seed": "随机种子", "template": "模板", "eval_ratio": "评估集比例",
    "format": "数据格式", "max_seq_length": "最长序列", "skip_bad": "跳过有误的行", "compare": "与基础模型 + 适配器对比",
    "trust_remote_code": "信任远程代码", "quantization": "量化方式", "double_quant": "双重量化",
    "compute_dtype": "计算精度", "lora_r": "LoRA 秩 (r)", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "target_modules": "目标层", "learning_rate": "学习率", "lr_scheduler": "学习率调度",
    "warmup_ratio": "预热比例", "batch_size": "批大小", "grad_accum": "梯度累积步数",
    "max_steps": "最大步数", "epochs": "训练轮数", "packing": "序列拼接 (packing)", "gradient_checkpointing": "梯度检查点",
    "liger_kernels": "Liger 融合算子", "offload_activations": "激活值放到内存",
    "loss_on": "损失计算范围", "optim": "优化器", "max_grad_norm": "梯度裁剪", "logging_steps": "记录间隔步数",
    "save_steps": "保存间隔步数", "eval_steps": "评估间隔步数", "report_to": "同步记录到",
    "wandb_project": "wandb 项目", "system": "系统提示词", "temperature": "温度", "top_p": "Top-p",
    "top_k": "Top-k", "precision": "加载精度", "repetition_penalty": "重复惩罚", "max_new_tokens": "最大生成长度",
}


SETTINGS = (PrepareConfig, TrainConfig, MergeConfig, GenerationConfig)
HELP_EN = {cls.__name__: cls.help() for cls in SETTINGS}


def _flat(prefix: str, table: dict) -> dict[str, str]:
    return {f"{prefix}_{cls}_{name}": text for cls, by_name in table.items() for name, text in by_name.items()}


TABLES = {
    "en": {**EN, **_flat("help", HELP_EN), **{f"label_{k}": v for k, v in LABEL_EN.items()}},
    "zh": {**ZH, **_flat("help", HELP_ZH), **{f"label_{k}": v for k, v in LABEL_ZH.items()}},
}
I18N = gr.I18n(**TABLES)


def t(key: str):
    """A translatable piece of static text."""
    return I18N(key)


def label(name: str):
    return I18N(f"label_{name}")


def help(cls, name: str):
    """The help of setting `name` of settings class `cls`."""
    return I18N(f"help_{cls.__name__}_{name}")


# ---- text made on the server -------------------------------------------------------------
SAY = {
    "en": {
        "state_starting": "starting", "state_running": "running", "state_stopping": "stopping after this step",
        "state_finished": "finished", "state_stopped": "stopped (adapter kept)", "state_failed": "failed",
        "state_unknown": "no run yet",
        "plan": "These settings: **{updates} updates**, about **{passes} passes** over the training data, {tokens} tokens ({rows} rows) an update.",
        "plan_many": "Many passes over little data: the model may learn it by heart. Fewer steps may answer better.",
        "started": "Training started in {run}.", "stopping": "Stopping {run} after the current step; the adapter will be kept.",
        "nothing_running": "Nothing is running.", "resumed": "Resuming {run} from its last checkpoint.",
        "resume_confirm": "Resume **{run}** from {checkpoint}? Press Resume again to confirm.",
        "saved": "Saved dataset **{name}**: {train} rows for training, {eval} for evaluation. The Train tab lists it now.",
        "no_file": "Choose a data file first (upload one or press “Use the sample data”).",
        "merge_running": "Merging… (this loads the base model; it can take a few minutes on large models)",
        "merged": "Merged model written to **{out}** ({size}).", "merge_failed": "The merge failed: {cause}",
        "no_run": "No run selected.", "released": "Models unloaded; GPU memory freed.",
        "col_name": "name",
        "col_state": "state",
        "col_step": "step",
        "col_model": "model",
        "col_data": "data",
        "col_preset": "preset",
        "col_r": "r",
        "col_lr": "learning rate",
        "col_steps": "steps",
        "col_batch": "batch",
        "col_final_loss": "final loss",
        "col_created": "created",
        "col_folder": "folder",
        "chart_step": "step", "chart_loss": "loss", "chart_series": "curve", "series_train": "train", "series_eval": "eval",
        "col_prompt": "prompt", "col_response": "response", "hist_tokens": "tokens per row", "hist_rows": "rows",
        "template_chosen": "Template: **{template}** (chosen).",
        "template_auto_chat": "Template: **{template}**: the model's own chat template, which it already knows (auto).",
        "template_auto_seed": "Template: **{template}** (### Human: … ### Assistant: …): the model has no chat template of its own (auto).",
        "layout_alpaca": "Alpaca/Belle (instruction, input, output)", "layout_sharegpt": "ShareGPT (conversations)",
        "layout_messages": "OpenAI messages", "layout_text": "plain text",
        "skip_hint": "Fix that line, or tick “Skip broken rows” under Advanced settings to leave broken rows out.",
        "reading": "Reading the file", "list_sep": ", ", "see_log": "see the log below",
        "merge_check_ok": "Checked: the merged model gives the same answers as base + adapter "
                          "(same most likely next token at {agree} of the probe; largest logit difference {diff}).",
        "merge_check_failed": "NOT passed: the merged model does not answer like base + adapter "
                              "(same most likely next token at {agree} of the probe; largest logit difference {diff}).",
        "fit_16": "Loaded in 16-bit: it needs {need} GiB of GPU memory and {free} GiB are free.",
        "fit_smaller": "Loaded in {bits}-bit: 16-bit needs {need16} GiB and this GPU has {free} GiB free.",
        "fit_chosen": "Loaded in {bits}-bit, as chosen ({need} GiB needed, {free} GiB free).",
        "merge_check_tensors": "Merged tensor by tensor, every weight checked to be finite; the model is too large "
                               "to hold twice here, so its answers were not compared with base + adapter.",
        "progress_line": "<span>step {step} / {total}</span> · <span>elapsed {elapsed}</span> · "
                         "<span>remaining {remaining}</span> · <span>{speed} tokens/s</span>",
        "adapter_saved": "Adapter saved in <code>{path}</code>",
        "no_gpu_found": "no GPU found", "monitor_unavailable": "monitor unavailable: {why}",
        "counts": "Read {read} rows, {usable} usable, {kept} picked.",
        "dropped": "Dropped {n} rows ({why}).",
        "tokens_per_row": "Tokens per row: mean {mean}, median {p50}, p95 {p95}, longest {max}.",
        "cut": "Longer than max sequence length {max} (would be cut): {rows} rows ({share}).",
        # ---- chat speed ----
        "chat_speed": "{name}: {tps} tokens/s, first token after {first} s ({tokens} tokens).",
        "chat_loading": "{name}: loading, {s} s",
        "chat_warming": "{name}: warming up (compiling for fast replies), {s} s",
        "chat_ready": "{name}: ready; the warm-up took {s} s.",
        "chat_plain": "{name}: fast replies could not be set up ({why}); answering the plain way, more slowly.",
        "chat_training_cpu": "Training is running: chat and training share the CPU, so both are slower.",
        "chat_training_gpu": "Training is running: {free} GiB of GPU memory are free. Chat loads a model only in a "
                             "precision that fits there, and training may slow down while it answers.",
    },
    "zh": {
        "state_starting": "正在启动", "state_running": "训练中", "state_stopping": "本步结束后停止",
        "state_finished": "已完成", "state_stopped": "已停止（适配器已保存）", "state_failed": "失败",
        "state_unknown": "还没有训练",
        "plan": "按当前设置：**{updates} 次更新**，约把训练数据过 **{passes} 遍**，每次更新约 {tokens} 个 token（{rows} 条数据）。",
        "plan_many": "数据少、遍数多：模型可能会死记硬背。减少步数，回答也许更好。",
        "started": "训练已开始：{run}。", "stopping": "{run} 会在当前这一步结束后停止，已训练的适配器会保留。",
        "nothing_running": "当前没有正在进行的任务。", "resumed": "从最近的检查点继续训练 {run}。",
        "resume_confirm": "从 {checkpoint} 继续训练 **{run}**？再按一次“继续训练”确认。",
        "saved": "数据集 **{name}** 已保存：训练 {train} 条，评估 {eval} 条。训练页里已经可以选择它。",
        "no_file": "请先选择数据文件（上传一个，或点击“使用示例数据”）。",
        "merge_running": "正在合并……（需要加载基础模型，大模型可能要几分钟）",
        "merged": "合并后的模型已保存到 **{out}**（{size}）。", "merge_failed": "合并失败：{cause}",
        "no_run": "还没有选择训练记录。", "released": "模型已卸载，显存已释放。",
        "col_name": "名称",
        "col_state": "状态",
        "col_step": "进度",
        "col_model": "模型",
        "col_data": "数据",
        "col_preset": "预设",
        "col_r": "秩 r",
        "col_lr": "学习率",
        "col_steps": "总步数",
        "col_batch": "批大小",
        "col_final_loss": "最终损失",
        "col_created": "创建时间",
        "col_folder": "文件夹",
        "chart_step": "步数", "chart_loss": "损失", "chart_series": "曲线", "series_train": "训练", "series_eval": "评估",
        "col_prompt": "提示", "col_response": "回答", "hist_tokens": "每条的 token 数", "hist_rows": "条数",
        "template_chosen": "模板：**{template}**（手动选择）。",
        "template_auto_chat": "模板：**{template}**：模型自带的对话模板，模型已经熟悉它（自动）。",
        "template_auto_seed": "模板：**{template}**（### Human: … ### Assistant: …）：模型没有自带的对话模板（自动）。",
        "layout_alpaca": "Alpaca/Belle 格式（instruction、input、output）", "layout_sharegpt": "ShareGPT 格式（多轮对话）",
        "layout_messages": "OpenAI messages 格式", "layout_text": "纯文本",
        "skip_hint": "请修改这一行，或在“高级设置”里勾选“跳过有误的行”，把有误的行排除在外。",
        "reading": "正在读取文件", "list_sep": "，", "see_log": "见下面的日志",
        "merge_check_ok": "已检查：合并后的模型与“基础模型 + 适配器”的回答一致（探测文本上 {agree} 的位置最可能的下一个词相同；最大 logit 差 {diff}）。",
        "merge_check_failed": "未通过：合并后的模型与“基础模型 + 适配器”的回答不一致（探测文本上只有 {agree} 的位置最可能的下一个词相同；最大 logit 差 {diff}）。",
        "fit_16": "已用 16 位加载：需要 {need} GiB 显存，当前空闲 {free} GiB。",
        "fit_smaller": "已用 {bits} 位加载：16 位需要 {need16} GiB，而这块显卡只有 {free} GiB 空闲。",
        "fit_chosen": "已按选择用 {bits} 位加载（需要 {need} GiB，空闲 {free} GiB）。",
        "merge_check_tensors": "已逐个张量合并，每个权重都检查过没有 NaN/inf；模型太大，这台机器放不下两份，所以没有与“基础模型 + 适配器”对比回答。",
        "progress_line": "<span>步数 {step} / {total}</span> · <span>已用 {elapsed}</span> · "
                         "<span>剩余 {remaining}</span> · <span>{speed} tokens/s</span>",
        "adapter_saved": "适配器已保存：<code>{path}</code>",
        "no_gpu_found": "没有检测到显卡", "monitor_unavailable": "监控不可用：{why}",
        "counts": "读取 {read} 行，可用 {usable} 行，选取 {kept} 行。",
        "dropped": "丢弃 {n} 行（{why}）。",
        "tokens_per_row": "每行 token 数：平均 {mean}，中位数 {p50}，p95 {p95}，最长 {max}。",
        "cut": "超过最长序列 {max} 而会被截断的：{rows} 行（{share}）。",
        # ---- chat speed ----
        "chat_speed": "{name}：每秒 {tps} 个 token，首个 token 用时 {first} 秒（共 {tokens} 个 token）。",
        "chat_loading": "{name}：正在加载，{s} 秒",
        "chat_warming": "{name}：正在预热（编译以加快回答），{s} 秒",
        "chat_ready": "{name}：已就绪，预热用了 {s} 秒。",
        "chat_plain": "{name}：无法启用快速回答（{why}），改用普通方式回答，速度较慢。",
        "chat_training_cpu": "正在训练：对话和训练共用 CPU，两者都会变慢。",
        "chat_training_gpu": "正在训练：显存还有 {free} GiB 空闲。对话只会用放得下的精度加载模型，回答时训练可能变慢。",
    },
}


def lang(request: gr.Request | None) -> str:
    """'zh' when the browser prefers Chinese, else 'en'."""
    try:
        accept = request.headers.get("accept-language", "") if request is not None else ""
    except Exception:
        accept = ""
    first = accept.split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"


def say(key: str, language: str = "en", **kw) -> str:
    """A server-made message in the user's language."""
    text = SAY.get(language, SAY["en"]).get(key) or SAY["en"].get(key, key)
    return text.format(**kw)
