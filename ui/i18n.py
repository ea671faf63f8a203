"""English and Chinese text of the panel, and the 中文 / English switch that picks one.

Static text (labels, help, headings) goes through gr.I18n (`t`, `label`, `help`): the page shows
the table of the language chosen with the header's switch (`SWITCH_JS` sets gradio's locale and a
cookie), else of the browser's language. Text made by the server goes through `say(key,
lang(request))`: `lang` reads the same cookie, else the browser's Accept-Language.
"""

from __future__ import annotations

import gradio as gr

from core.config import DownloadConfig, ExportConfig, GenerationConfig, MergeConfig, PrepareConfig, TrainConfig

EN: dict[str, str] = {
    "title": "# QLoRA Studio\nFine-tune a language model on your own instruction data: **1 Data → 2 Train → 3 Merge → 4 Chat**.",
    "tab_data": "1 · Data", "tab_train": "2 · Train", "tab_merge": "3 · Merge", "tab_chat": "4 · Chat", "tab_runs": "Runs",
    # data
    "data_intro": "Upload an instruction file (JSON lines, JSON or CSV with instruction / input / output), or try the bundled sample (questions in English and Chinese that teach the model a new name). The preview shows the exact text the model will learn from.",
    "upload": "Upload a data file", "source": "Data file", "use_sample": "Use the sample data",
    "layout": "Detected layout", "preview": "Preview (template applied)", "preview_btn": "Refresh preview",
    "save_dataset": "Save dataset", "stats": "Statistics", "histogram": "Token length of each row",
    "dataset_name": "Dataset name (optional)",
    # train
    "train_intro": "Pick a model and a prepared dataset, choose a preset, press Start. Training runs in the background: you can close the browser and come back.",
    "base_model": "Model", "prepared_dataset": "Prepared dataset", "preset": "Preset", "run_name": "Run name (optional)",
    "advanced": "Advanced settings", "wandb_key": "wandb API key (only passed to the run, never saved)",
    "start": "Start training", "stop": "Stop (keeps the adapter)", "resume": "Resume",
    "run_shown": "Run shown", "progress": "Progress", "loss_chart": "Loss", "gpu": "GPU and memory", "log": "Run log (last lines)",
    "refresh": "Refresh",
    "no_gpu_note": "No GPU on this machine: training runs as plain LoRA in float32, so 4-bit loading, Liger kernels and activation offloading (greyed out) do not apply.",
    # merge
    "merge_intro": "Fold a finished run's adapter into its base model to get a standalone model you can share or chat with.",
    "run": "Run", "base": "Base model", "out": "Name of the merged model (a folder in workspace/merged)",
    "dtype": "Weight format", "merge_btn": "Merge", "merge_result": "Result",
    # chat
    "chat_intro": "Talk to the merged model, a run's adapter on its base, or the base model. Pick a second model to compare their answers side by side.",
    "chat_model": "Model", "compare_with": "Compare with (optional)", "message": "Message",
    "chat_gpu_a": "GPU of the model", "chat_gpu_b": "GPU of the comparison model",
    "chat_gpu_help": "Where the model loads. Automatic: the GPU with the most free memory that no training run uses (for the comparison model, another one while one is free). Or one GPU; or several, such as 0,1, to spread a model too big for one card over them.",
    "send": "Send", "regenerate": "Regenerate", "clear": "Clear", "sampling": "Sampling settings", "release": "Unload models",
    "chat_a": "Answer", "chat_b": "Comparison", "stop_reply": "Stop the reply",
    # runs
    "runs_intro": "Every training run in this workspace. Select a row, then open it.",
    "open_train": "Show in Train", "open_merge": "Merge this run", "open_chat": "Chat with this run",
    "selected": "Selected run",
    # ---- export ----
    "export_intro": "### Export to GGUF\nTurn a merged model into GGUF files for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile that prompts it the way it was trained.",
    "export_model": "Merged model", "export_out": "Name of the export (a folder in workspace/exports; empty = the model's name)",
    "export_btn": "Export to GGUF",
    # ---- compare runs ----
    "compare_intro": "### Compare runs\nPick two or more runs: their loss curves on one chart, their settings side by side (the differences highlighted) and whether each one learned.",
    "compare_pick": "Runs to compare", "compare_btn": "Compare", "compare_settings": "Settings",
    "compare_learned": "Did it learn (eval loss before and after training)",
    # ---- job notice ----
    "notice_ask": "Notify me when a job ends",
    # ---- models ----
    "tab_models": "Models",
    "models_intro": "Every model this panel can use: the embedded default, the models in workspace/models, the merged models and the folders the operator allowed (--allow-dir). Nothing is loaded to make this list: it is read from each folder's files.",
    "models_table": "Local models", "models_refresh": "Refresh the list",
    "download_heading": "### Download a model or a dataset\nFrom Hugging Face, a mirror of it (give its address, for example `https://hf-mirror.com`) or ModelScope. It runs in the background: you can close the page, and a stopped or broken-off download continues where it stopped when you start it again. A dataset is streamed: only a random sample of its rows is kept, as a data file for the Data tab.",
    "download_name": "Name of the folder in workspace/models, or of the data file (empty = the repo's name)",
    "download_btn": "Download", "download_stop": "Stop the download", "download_progress": "Progress",
    "download_log": "Download log (last lines)", "merge_log": "Merge log (last lines)",
    "export_log": "Export log (last lines)",
    # ---- language switch ----
    "language": "Language",
    "common.complete": "Complete",  # gradio's screen-reader word after an event, missing from its zh-CN table
    # ---- fit check and which base ----
}

ZH: dict[str, str] = {
    "title": "# QLoRA Studio\n用你自己的指令数据微调大语言模型：**1 数据 → 2 训练 → 3 合并 → 4 对话**。",
    "tab_data": "1 · 数据", "tab_train": "2 · 训练", "tab_merge": "3 · 合并", "tab_chat": "4 · 对话", "tab_runs": "训练记录",
    "data_intro": "上传指令数据文件（JSON Lines、JSON 或 CSV，包含 instruction / input / output 字段），也可以先用自带的示例数据试一试（中英文问答，教模型记住一个新名字）。预览里显示的就是模型训练时看到的原文。",
    "upload": "上传数据文件", "source": "数据文件", "use_sample": "使用示例数据",
    "layout": "识别出的数据格式", "preview": "预览（已套用模板）", "preview_btn": "刷新预览",
    "save_dataset": "保存数据集", "stats": "统计信息", "histogram": "每条数据的 token 长度分布",
    "dataset_name": "数据集名称（可不填）",
    "train_intro": "选择模型和处理好的数据集，选一个预设，点击“开始训练”。训练在后台进行：关掉浏览器也不会中断，回来即可继续查看。",
    "base_model": "模型", "prepared_dataset": "数据集", "preset": "预设", "run_name": "训练名称（可不填）",
    "advanced": "高级设置", "wandb_key": "wandb API 密钥（只交给本次训练使用，不会保存）",
    "start": "开始训练", "stop": "停止（保留已训练的适配器）", "resume": "继续训练",
    "run_shown": "当前查看的训练", "progress": "进度", "loss_chart": "损失曲线", "gpu": "显卡与内存", "log": "训练日志（最后几行）",
    "refresh": "刷新",
    "no_gpu_note": "这台机器没有显卡：训练以 float32 的普通 LoRA 进行，所以 4 位加载、Liger 算子和激活值卸载（已置灰）都不起作用。",
    "merge_intro": "把训练好的适配器合并进基础模型，得到一个可以单独使用、分享或对话的完整模型。",
    "run": "训练记录", "base": "基础模型", "out": "合并后模型的名称（workspace/merged 里的文件夹）",
    "dtype": "权重精度", "merge_btn": "开始合并", "merge_result": "合并结果",
    "chat_intro": "和合并后的模型、带适配器的基础模型或原始基础模型对话。再选一个模型，就能并排比较两者的回答。",
    "chat_model": "模型", "compare_with": "对比模型（可不选）", "message": "输入消息",
    "chat_gpu_a": "模型所在的显卡", "chat_gpu_b": "对比模型所在的显卡",
    "chat_gpu_help": "模型加载到哪张显卡。自动：没有训练在用、空闲显存最多的那张（对比模型在还有空闲卡时用另一张）。也可以选一张；或者选几张，例如 0,1，把一张卡放不下的模型分摊到这些卡上。",
    "send": "发送", "regenerate": "重新生成", "clear": "清空", "sampling": "生成参数", "release": "卸载模型",
    "chat_a": "回答", "chat_b": "对比回答", "stop_reply": "停止回答",
    "runs_intro": "本工作区里的所有训练。选中一行后，可以查看曲线、合并或对话。",
    "open_train": "在训练页查看", "open_merge": "合并这次训练", "open_chat": "和它对话",
    "selected": "选中的训练",
    # ---- export ----
    "export_intro": "### 导出为 GGUF\n把合并后的模型导出成 llama.cpp、Ollama 和 LM Studio 使用的 GGUF 文件，并附带一个 Ollama Modelfile，按训练时的模板给模型提问。",
    "export_model": "合并后的模型", "export_out": "导出的名称（workspace/exports 里的文件夹；留空 = 模型的名称）",
    "export_btn": "导出为 GGUF",
    # ---- compare runs ----
    "compare_intro": "### 对比训练\n选两次或更多次训练：损失曲线画在同一张图上，设置并排列出（不同之处高亮），并看每次训练是否学到了东西。",
    "compare_pick": "要对比的训练", "compare_btn": "对比", "compare_settings": "设置",
    "compare_learned": "学到了吗（训练前后的评估损失）",
    # ---- job notice ----
    "notice_ask": "任务结束时通知我",
    # ---- models ----
    "tab_models": "模型",
    "models_intro": "本面板能用的所有模型：内置的默认模型、workspace/models 里的模型、合并后的模型，以及管理员允许读取的文件夹（--allow-dir）。生成这个列表不会加载任何模型，只读取每个文件夹里的文件。",
    "models_table": "本地模型", "models_refresh": "刷新列表",
    "download_heading": "### 下载模型或数据集\n可以从 Hugging Face、它的镜像站（填写镜像地址，例如 `https://hf-mirror.com`）或魔搭社区 ModelScope 下载。下载在后台进行：可以关掉网页；停止或中断的下载，再次开始时会从中断处继续。数据集以流式读取：只随机抽取一部分保存为数据文件，供数据页使用。",
    "download_name": "workspace/models 里的文件夹名，或数据文件名（留空 = 仓库名）",
    "download_btn": "开始下载", "download_stop": "停止下载", "download_progress": "下载进度",
    "download_log": "下载日志（最后几行）", "merge_log": "合并日志（最后几行）", "export_log": "导出日志（最后几行）",
    # ---- language switch ----
    "language": "语言",
    "common.complete": "完成",
    # ---- fit check and which base ----
}

# Help shown under each setting, in Chinese, by settings class (a field name can mean different
# things in two classes); the English comes from the dataclasses themselves.
HELP_ZH: dict[str, dict[str, str]] = {
    "PrepareConfig": {
        "input": "数据文件：JSON Lines、JSON 数组或 CSV。",
        "out": "写入 train.jsonl、eval.jsonl 和 manifest.json 的文件夹（不能已经存在）。",
        "sample": "随机抽取多少条（0 = 全部）。原教程抽取 1000 条。",
        "seed": "种子相同，抽到的就是同样的数据。",
        "template": "提示模板：auto（模型有自带的对话模板就用它，否则用 seed）、seed（原教程的 ### Human: … ### Assistant: …）、chat（模型自带的对话模板），或自定义，用 {instruction}、{input}、{output} 占位。",
        "eval_ratio": "留出多少比例的数据用来评估（0 到 0.5）。",
        "model": "用哪个模型的分词器统计 token 数（chat 模板也用这个模型自带的对话模板）。",
        "format": "auto（自动识别）、alpaca、sharegpt、messages 或 text。",
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
        "compute_dtype": "auto（显卡支持时用 bf16，CPU 上用 fp32）、bfloat16、float16 或 float32。",
        "trust_remote_code": "运行模型自带的代码。只对你信任的模型打开。",
        "gpus": "用哪几张显卡训练，填 GPU 面板里的编号，例如 0,1；留空 = 第一张。选两张或更多时，每张卡各跑一份模型，共同完成每一次更新（数据并行）：各项设置仍然描述一次更新。",
        "lora_r": "LoRA 秩：越大能学到的越多，显存占用也越多。",
        "lora_alpha": "LoRA 缩放系数 alpha，更新量按 alpha / r 缩放。",
        "lora_dropout": "LoRA 输入的 dropout，防止过拟合（0 到 0.5）。",
        "target_modules": "加 LoRA 的层：default（模型常用的层，Llama 为 q_proj 和 v_proj）、all-linear，或用逗号分隔的层名。",
        "learning_rate": "每次更新的步子有多大。不拼接时 LoRA 通常用 2e-4；默认预设在显卡上用 3.4e-4，因为拼接后每次更新包含的 token 约多 1.7 倍；在 CPU 上用 1e-3，因为那里训练的是更小的 LoRA、更新次数更少。",
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
        "fp8_base": "在有 FP8 单元的显卡上（计算能力 8.9 及以上，例如 RTX 40 系列、H100），与冻结的 4-bit 基础权重相乘时用 FP8。off：不用；backward：只在反向传播里用（给出损失的前向传播仍用 bf16）：学到的一样，13B 上快几个百分点，较小的模型上反而更慢；all：前向传播也用，更快，但模型学得稍差一些。LoRA 层仍用 bf16。其他设备上忽略。仅限 GPU。",
        "offload_activations": "把反向传播要用的激活值放在内存（CPU）里而不是显存里（仅限 GPU）：一次能放下更多行。拷贝与计算同时进行，并在需要之前提前取回。",
        "loss_on": "只在回答部分计算损失（response），还是在全文上计算（all）。",
        "optim": "优化器（transformers 支持的名字，例如 adamw_torch、paged_adamw_8bit）。",
        "max_grad_norm": "梯度裁剪的范数上限（0 = 不裁剪）。",
        "logging_steps": "每隔多少步记录一次指标。",
        "save_steps": "每隔多少步保存一次检查点（0 = 只在最后保存）。",
        "eval_steps": "每隔多少步计算一次评估损失（0 = 不计算；需要留出评估数据）。",
        "seed": "决定 LoRA 的初始权重和数据的顺序，相同的种子可以复现结果。",
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
        # ---- which base (merge) ----
        "base_weights": "适配器加到哪份基础权重上：original（基础模型自己的 16 位权重，原教程就是这样合并的）或 as-trained（把这些权重舍入成 4 位 NF4 再还原，也就是 QLoRA 训练适配器时实际用的权重，axolotl 就是这样合并的）。as-trained 与训练时的“基础模型 + 适配器”完全一致；original 保留基础模型的全部精度。",
    },
    "DownloadConfig": {
        "repo": "模型库里的名字，写成 所有者/名称（例如 Qwen/Qwen2.5-0.5B-Instruct，或数据集 BelleGroup/train_0.5M_CN）。",
        "source": "从哪里下载：huggingface、mirror（下面地址处的 Hugging Face 镜像站）或 modelscope（魔搭社区）。",
        "endpoint": "镜像站的地址，来源选 mirror 时填写（例如 https://hf-mirror.com）；来源为 ModelScope 时可填另一个 ModelScope 站点（留空 = 默认）。",
        "out": "写入模型的文件夹（留空 = workspace/models/ 加仓库名；不能已经存在）。",
        "kind": "这个名字指的是什么：模型（完整下载）或数据集（流式读取，只随机抽取一部分保存为数据文件，供数据页使用）。",
        "rows": "数据集：保留多少条，在流式读取时随机抽取（不会下载整个数据集）。",
        "seed": "数据集：抽样的随机种子。",
        "allow_bin": "仓库里没有 safetensors 时，允许下载 pickle 格式的权重（.bin）。transformers 会用 weights_only 方式读取；但仍然只对你信任的仓库打开。",
    },
    "GenerationConfig": {
        "precision": "模型在显卡上的加载方式：auto（权重和上下文放得下就用 16 位，否则 8 位，再不行 4 位）、16bit、8bit、4bit（NF4），或 int4（torchao 的 int4 仅权重量化：和 4bit 差不多小，编译后更快；需要安装 torchao）。CPU 上不起作用。",
        "system": "给助手的长期指示，放在每段对话之前。",
        "temperature": "随机程度：0 表示总是选最可能的词。",
        "top_p": "只从累计概率达到这个比例的候选词里抽样。",
        "top_k": "只从最可能的这么多个词里抽样（0 = 不限制）。",
        "repetition_penalty": "大于 1 时减少重复。",
        "max_new_tokens": "回答最多多少个 token。",
        "gpus": "把模型加载到哪几张显卡，填 GPU 面板里的编号，例如 0,1；留空 = 第一张。选两张或更多时，模型的各层分摊到这些卡上，用于一张卡放不下的模型。CPU 上不起作用。",
    },
    # ---- export ----
    "ExportConfig": {
        "model": "要导出的合并后模型的文件夹。",
        "out": "写入 GGUF 文件和 Modelfile 的文件夹（不能已经存在）。",
        "quant": "在 16 位文件之外再导出一个更小的版本：q4_k_m（4 位，约为 16 位大小的 30%；装了 llama.cpp 的 llama-quantize 时是 Q4_K_M，没装时在这里生成 Q4_0）、q8_0（8 位，约 53%），或 none（不导出）。",
    },
}

# Field labels: the setting's name in words.
LABEL_EN: dict[str, str] = {
    "sample": "Rows to sample", "seed": "Random seed", "template": "Template", "eval_ratio": "Eval share",
    "format": "Layout", "max_seq_length": "Max sequence length", "skip_bad": "Skip broken rows",
    "gpus": "GPUs", "trust_remote_code": "Trust remote code", "compare": "Compare with base + adapter", "quantization": "Quantization", "double_quant": "Double quantization",
    "compute_dtype": "Compute dtype", "lora_r": "LoRA rank (r)", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "target_modules": "Target modules", "learning_rate": "Learning rate", "lr_scheduler": "LR schedule",
    "warmup_ratio": "Warmup share", "batch_size": "Batch size", "grad_accum": "Gradient accumulation",
    "max_steps": "Max steps", "epochs": "Epochs", "packing": "Packing", "gradient_checkpointing": "Gradient checkpointing",
    "liger_kernels": "Liger fused kernels", "fp8_base": "FP8 base matmuls", "offload_activations": "Offload activations to CPU",
    "loss_on": "Loss on", "optim": "Optimizer", "max_grad_norm": "Max grad norm", "logging_steps": "Log every N steps",
    "save_steps": "Save every N steps", "eval_steps": "Eval every N steps", "report_to": "Report to",
    "wandb_project": "wandb project", "system": "System prompt", "temperature": "Temperature", "top_p": "Top-p",
    "top_k": "Top-k", "precision": "Precision", "repetition_penalty": "Repetition penalty", "max_new_tokens": "Max new tokens",
    # ---- export ----
    "quant": "Smaller copy",
    # ---- models ----
    "repo": "Hub id (owner/name)", "source": "Source", "endpoint": "Mirror address", "allow_bin": "Allow .bin weights",
    "kind": "What to download", "kind_model": "Model", "kind_dataset": "Dataset", "rows": "Rows to keep (dataset)",
    # ---- which base (merge) ----
    "base_weights": "Which base weights", "dtype": "Weight format",
}
LABEL_ZH: dict[str, str] = {
    "sample": "抽样条数", "seed": "随机种子", "template": "模板", "eval_ratio": "评估集比例",
    "format": "数据格式", "max_seq_length": "最长序列", "skip_bad": "跳过有误的行", "compare": "与基础模型 + 适配器对比",
    "gpus": "显卡", "trust_remote_code": "信任远程代码", "quantization": "量化方式", "double_quant": "双重量化",
    "compute_dtype": "计算精度", "lora_r": "LoRA 秩 (r)", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "target_modules": "目标层", "learning_rate": "学习率", "lr_scheduler": "学习率调度",
    "warmup_ratio": "预热比例", "batch_size": "批大小", "grad_accum": "梯度累积步数",
    "max_steps": "最大步数", "epochs": "训练轮数", "packing": "序列拼接 (packing)", "gradient_checkpointing": "梯度检查点",
    "liger_kernels": "Liger 融合算子", "fp8_base": "基础权重用 FP8 计算", "offload_activations": "激活值放到内存",
    "loss_on": "损失计算范围", "optim": "优化器", "max_grad_norm": "梯度裁剪", "logging_steps": "记录间隔步数",
    "save_steps": "保存间隔步数", "eval_steps": "评估间隔步数", "report_to": "同步记录到",
    "wandb_project": "wandb 项目", "system": "系统提示词", "temperature": "温度", "top_p": "Top-p",
    "top_k": "Top-k", "precision": "加载精度", "repetition_penalty": "重复惩罚", "max_new_tokens": "最大生成长度",
    # ---- export ----
    "quant": "更小的版本",
    # ---- models ----
    "repo": "名称（所有者/名称）", "source": "下载来源", "endpoint": "镜像站地址", "allow_bin": "允许 .bin 权重",
    "kind": "下载什么", "kind_model": "模型", "kind_dataset": "数据集", "rows": "保留条数（数据集）",
    # ---- which base (merge) ----
    "base_weights": "合并到哪份基础权重", "dtype": "权重精度",
}


SETTINGS = (PrepareConfig, TrainConfig, MergeConfig, GenerationConfig, ExportConfig, DownloadConfig)
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
        "pick_run_first": "Pick a run first: click its row in the table above.",
        "no_run": "No run selected.", "released": "Models unloaded; GPU memory freed.",
        "nothing_to_regenerate": "Nothing to write again yet: send a message first.",
        "pick_model": "Pick a model to chat with first (the Model list above).",
        "no_model": "no model chosen",
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
        # ---- several GPUs ----
        "gpu_first": "the first GPU", "gpu_one": "GPU {index} · {name} · {free} GiB free",
        "gpu_all": "all {n} GPUs, sharing each update",
        "gpu_auto": "automatic: the idle GPU with the most free memory",
        "gpu_spread": "all {n} GPUs, the model spread over them",
        "chat_on_idle": "GPU {gpu} (idle)", "chat_on_shared": "GPU {gpu} (a training run uses it too)",
        "chat_on_chosen": "GPU {gpu} (as chosen)", "chat_on_spread": "GPUs {gpus} (the model spread over them)",
        "chat_at": "{name} on {where}", "chat_placed": "on {where}: {what}",
        "chat_at_fit": "{name} on {where}: {what}", "chat_where": "{name} on {where}: loaded.",
        "plan_gpus": "{n} GPUs share each update: {batch} rows x {accum} accumulation on each, {rows} rows an update.",
        "plan_gpus_lr": "The update grows to fit the GPUs, so the learning rate is multiplied by {factor}.",
        "counts": "Read {read} rows, {usable} usable, {kept} picked.",
        "dropped": "Dropped {n} rows ({why}).",
        "tokens_per_row": "Tokens per row: mean {mean}, median {p50}, p95 {p95}, longest {max}.",
        "cut": "Longer than max sequence length {max} (would be cut): {rows} rows ({share}).",
        # ---- export ----
        "export_running": "Exporting… (llama.cpp's converter reads the whole model; a 7B model takes a few minutes)",
        "exported": "Exported to **{out}**:", "export_failed": "The export failed: {cause}",
        "export_modelfile": "Ollama Modelfile: `{path}` (its template is the one the model was trained with).",
        "export_no_quantizer": "The 4-bit Q4_K_M file was not made: it needs llama.cpp's llama-quantize, which is not installed on this machine (put it on the PATH, or set QLORA_STUDIO_LLAMA_QUANTIZE to it). The 16-bit file is complete; choose q8_0 for a smaller file made without it.",
        "export_unsupported": "This model cannot be exported to GGUF here: {why}. The merged folder still works in the Chat tab and with transformers.",
        "export_howto": "Run it: `cd {out} && ollama create {name} -f Modelfile && ollama run {name}`, or with llama.cpp: `llama-cli -m {out}/{file} -cnv`.",
        # ---- compare runs ----
        "col_setting": "Setting", "col_measure": "Measure",
        "compare_pick_two": "Pick at least two runs to compare.",
        "compare_differ": "Settings that differ: {n} (highlighted).",
        # the settings a run trained with, in words (a value with none of its own is shown as it is: float32)
        "compare_asked": "{value} (asked for {asked})", "yes": "yes", "no": "no",
        "value_model_default": "the embedded SmolLM2-135M-Instruct",
        "value_preset_default": "default", "value_preset_tutorial": "tutorial",
        "value_quantization_4bit": "4-bit NF4", "value_quantization_none": "none (plain LoRA)",
        "value_compute_dtype_auto": "auto",
        "value_target_modules_default": "the model's usual layers", "value_target_modules_all-linear": "all linear layers",
        "value_lr_scheduler_linear": "linear", "value_lr_scheduler_cosine": "cosine",
        "value_lr_scheduler_constant": "constant", "value_lr_scheduler_constant_with_warmup": "constant after warmup",
        "value_fp8_base_off": "off", "value_fp8_base_backward": "backward pass only",
        "value_fp8_base_all": "forward and backward passes",
        "value_loss_on_response": "replies only", "value_loss_on_all": "whole text", "value_report_to_none": "none",
        "learned_eval_loss_before": "Eval loss before training", "learned_eval_loss_after": "Eval loss after training",
        "learned_verdict": "Verdict", "learned_eval_rows": "Eval rows measured",
        # ---- job notice ----
        "notice_finished": "finished", "notice_failed": "failed", "notice_stopped": "stopped",
        "notice_body": "{job} {name}: {state}", "job_train": "Training", "job_merge": "Merge", "job_export": "Export",
        "job_download": "Download",
        # ---- models ----
        "col_m_name": "name", "col_m_architecture": "architecture", "col_m_parameters": "parameters",
        "col_m_size": "size", "col_m_chat_template": "chat template", "col_m_train_fit": "fits the GPU for training",
        "col_m_chat_fit": "fits the GPU for chat", "col_m_where": "from", "col_m_path": "folder",
        "has_yes": "yes", "has_no": "no", "fits_yes": "yes", "fits_no": "no", "no_gpu_here": "no GPU here", "fit_bits": "{bits}-bit",
        "where_embedded": "embedded", "where_workspace": "workspace/models", "where_merged": "merged",
        "where_allowed": "allowed folder", "not_converted": "converted on first use", "unreadable": "unreadable: {why}",
        "models_no_gpu": "No GPU on this machine: whether a model fits a GPU cannot be told here. Training and chat run on the CPU (slowly, fine for the embedded model).",
        "models_gpu": "GPU memory free now: {free}. “Fits for training” means 4-bit QLoRA at the default settings; for chat, the largest precision that fits.",
        "dl_none": "No download yet.",
        "dl_starting": "Starting the download of {repo}…",
        "dl_running": "Downloading {repo}: {done} of {total} · {speed}/s · {left} left",
        "dl_running_early": "Downloading {repo}: {done} of {total}",
        "dl_finished": "Downloaded {repo} into <code>{path}</code> ({total}). The Train and Chat tabs offer it now.",
        "dl_stopped": "Stopped the download of {repo} at {done} of {total}. Start it again to continue where it stopped.",
        "dl_failed": "The download of {repo} failed: {error}",
        "dl_started": "Download of {repo} started.", "dl_stopping": "Stopping the download…",
        "dl_nothing": "No download is running.",
        "dl_dataset_running": "Streaming {repo}: {share} of the sample taken",
        "dl_dataset_finished": "Saved {rows} rows of {repo}, picked at random, as <code>{path}</code>. The Data tab offers it now.",
        "dl_dataset_stopped": "Stopped sampling {repo}; nothing was kept. Start it again to take a new sample.",
        # ---- language switch ----
        "source_base": "base · {name}", "source_merged": "merged · {name}", "source_model": "model · {name}",
        "source_adapter": "adapter · {name}", "merge_failed_log": "The merge failed: see the log below.",
        "phrase_no_gpu": "(no GPU)", "phrase_compute": "compute",
        "state_stopped_empty": "stopped before training began (nothing to keep)",
        # ---- first run: time estimate, did it learn ----
        "estimate_table": "Time: about **{time}** on this {device}, from a table of measured speeds (the real "
                          "time shows from the first step).",
        "estimate_run": "Time: about **{time}**, from the speed the earlier run {run} measured here.",
        "estimate_first_step": "Time: no measured speed for this device yet; the time left shows from the first step.",
        "estimate_long": "This run would take about {time}: fewer steps, a shorter max sequence length or a GPU "
                         "make it shorter.",
        "minutes": "{n} min", "hours": "{n} h", "device_cpu": "CPU",
        "learned_title": "Did it learn?",
        "learned_loss": "Eval loss on {rows} held-out rows: base model {before} → tuned {after}.",
        "learned_better": "The tuned model scores better than the base model on held-out rows.",
        "learned_same": "The tuned model scores about the same as the base model on held-out rows: it has learned "
                        "little yet; try more steps or a higher learning rate.",
        "learned_worse": "The tuned model scores worse than the base model on held-out rows; try more steps, a lower "
                         "learning rate, or the model's own chat template.",
        "learned_none": "No eval split: keep a share of the rows apart in the Data tab to see whether a run learned.",
        "learned_question": "held-out question", "learned_expected": "expected", "learned_base": "base model",
        "learned_tuned": "tuned model",
        "col_learned": "eval loss (base → tuned)", "verdict_better": "better", "verdict_same": "same",
        "verdict_worse": "worse", "verdict_unknown": "unknown",
        # ---- fit check ----
        "fit_fits": "✅ Fits: needs about {need} GiB of {where}, {free} GiB free.",
        "fit_tight": "⚠️ Tight: needs about {need} GiB of {where}, {free} GiB free. It may run out of memory; you can still start it.",
        "fit_no": "⛔ Will not fit now: needs about {need} GiB of {where}, {free} GiB free (close what else uses it).",
        "fit_never": "⛔ Will not fit: needs about {need} GiB of {where}, and this machine has {total} GiB in all.",
        "fit_would": "Fits with: {changes}.",
        "fit_where_gpu": "GPU memory", "fit_where_ram": "RAM",
        "fit_merge_exact": "Merged tensor by tensor: no GPU needed.",
        "fit_merge_peft": "This adapter is merged with the whole model in memory ({why}).",
        "fit_chat": "✅ Loads in {bits}-bit: needs about {need} GiB of GPU memory, {free} GiB free.",
        "fit_chat_smaller": "⚠️ Loads in {bits}-bit: 16-bit needs about {need16} GiB of GPU memory, {free} GiB free.",
        "fit_int4_hint": "For faster replies choose Precision int4: about five times the speed of 4-bit NF4 "
                         "(measured on a 7B), after a minute or two of compiling when it loads.",
        "fit_chat_no": "⛔ Will not fit: even 4-bit needs about {need} GiB of GPU memory, {free} GiB free.",
        "fitfix_quantization": "turn on 4-bit", "fitfix_offload_activations": "offload activations",
        "fitfix_gradient_checkpointing": "turn on gradient checkpointing", "fitfix_batch_size": "batch {v}",
        "fitfix_grad_accum": "accumulation {v}", "fitfix_max_seq_length": "max length {v}", "fitfix_lora_r": "LoRA rank {v}",
        "retry_fit": "Retry with settings that fit ({changes})",
        "retried": "Started again as {run} with {changes}.",
        "retry_nothing": "No smaller settings left to try: choose a smaller model.",
        "base_as_trained_cpu": "This run trained without a GPU, on the original weights: \"as trained\" is the original here.",
        # ---- chat speed ----
        "chat_speed": "{name}: {tps} tokens/s, first token after {first} s ({tokens} tokens).",
        "chat_loading": "{name}: loading, {s} s",
        "chat_warming": "{name}: warming up (preparing fast replies), {s} s",
        "chat_ready": "{name}: ready; the warm-up took {s} s.",
        "chat_plain": "{name}: fast replies could not be set up ({why}); answering the plain way, more slowly.",
        "chat_training_cpu": "Training is running: chat and training share the CPU, so both are slower.",
        "chat_training_gpu": "Training is running: {free} GiB of GPU memory are free. Chat loads a model only in a "
                             "precision that fits there, and training may slow down while it answers.",
        # ---- q4_0 ----
        "export_q4_0_instead": "The 4-bit file is **Q4_0**, written here with the gguf package, because Q4_K_M needs "
                               "llama.cpp's llama-quantize, which is not installed on this machine (put it on the "
                               "PATH, or set QLORA_STUDIO_LLAMA_QUANTIZE to it, to get Q4_K_M next time). Ollama, "
                               "llama.cpp and LM Studio load Q4_0 like any GGUF; it is about as small as Q4_K_M but "
                               "answers a little less like the 16-bit file, and small models (under about 1B "
                               "parameters) change noticeably: for those, choose q8_0.",
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
        "pick_run_first": "请先选择一次训练：在上面的表格里点击它所在的行。",
        "no_run": "还没有选择训练记录。", "released": "模型已卸载，显存已释放。",
        "nothing_to_regenerate": "还没有可以重新生成的回答：请先发送一条消息。",
        "pick_model": "请先在上面的“模型”里选择要对话的模型。",
        "no_model": "未选择模型",
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
        # ---- several GPUs ----
        "gpu_first": "第一张显卡", "gpu_one": "GPU {index} · {name} · 空闲 {free} GiB",
        "gpu_all": "全部 {n} 张显卡，共同完成每次更新",
        "gpu_auto": "自动：空闲显存最多的空闲显卡",
        "gpu_spread": "全部 {n} 张显卡，模型分摊到各张卡上",
        "chat_on_idle": "GPU {gpu}（空闲）", "chat_on_shared": "GPU {gpu}（训练也在用这张卡）",
        "chat_on_chosen": "GPU {gpu}（所选）", "chat_on_spread": "GPU {gpus}（模型分摊在这几张卡上）",
        "chat_at": "{name}，位于 {where}", "chat_placed": "位于 {where}：{what}",
        "chat_at_fit": "{name}，位于 {where}：{what}", "chat_where": "{name}，位于 {where}：已加载。",
        "plan_gpus": "{n} 张显卡共同完成每次更新：每张卡 {batch} 条 x 累积 {accum} 步，每次更新共 {rows} 条。",
        "plan_gpus_lr": "为了均分到各张显卡，每次更新的数据变多了，所以学习率乘以 {factor}。",
        "counts": "读取 {read} 行，可用 {usable} 行，选取 {kept} 行。",
        "dropped": "丢弃 {n} 行（{why}）。",
        "tokens_per_row": "每行 token 数：平均 {mean}，中位数 {p50}，p95 {p95}，最长 {max}。",
        "cut": "超过最长序列 {max} 而会被截断的：{rows} 行（{share}）。",
        # ---- export ----
        "export_running": "正在导出……（llama.cpp 的转换器要读取整个模型；7B 模型需要几分钟）",
        "exported": "已导出到 **{out}**：", "export_failed": "导出失败：{cause}",
        "export_modelfile": "Ollama Modelfile：`{path}`（其中的模板就是训练时用的模板）。",
        "export_no_quantizer": "没有生成 4 位的 Q4_K_M 文件：这需要 llama.cpp 的 llama-quantize，而这台机器上没有安装（把它放到 PATH 里，或用环境变量 QLORA_STUDIO_LLAMA_QUANTIZE 指向它）。16 位文件已完整生成；想要更小的文件而不装它，可以选 q8_0。",
        "export_unsupported": "这个模型无法在这里导出为 GGUF：{why}。合并后的文件夹仍可以在“对话”页和 transformers 中使用。",
        "export_howto": "运行方法：`cd {out} && ollama create {name} -f Modelfile && ollama run {name}`，或者用 llama.cpp：`llama-cli -m {out}/{file} -cnv`。",
        # ---- compare runs ----
        "col_setting": "设置", "col_measure": "指标",
        "compare_pick_two": "请至少选两次训练来对比。",
        "compare_differ": "不同的设置：{n} 项（已高亮）。",
        "compare_asked": "{value}（设置为 {asked}）", "yes": "是", "no": "否",
        "value_model_default": "内置的 SmolLM2-135M-Instruct",
        "value_preset_default": "默认", "value_preset_tutorial": "教程",
        "value_quantization_4bit": "4 位 NF4", "value_quantization_none": "不量化（普通 LoRA）",
        "value_compute_dtype_auto": "自动",
        "value_target_modules_default": "模型常用的层", "value_target_modules_all-linear": "所有线性层",
        "value_lr_scheduler_linear": "线性", "value_lr_scheduler_cosine": "余弦",
        "value_lr_scheduler_constant": "恒定", "value_lr_scheduler_constant_with_warmup": "预热后恒定",
        "value_fp8_base_off": "关闭", "value_fp8_base_backward": "仅反向传播",
        "value_fp8_base_all": "前向和反向传播",
        "value_loss_on_response": "仅回答部分", "value_loss_on_all": "全文", "value_report_to_none": "不同步",
        "learned_eval_loss_before": "训练前的评估损失", "learned_eval_loss_after": "训练后的评估损失",
        "learned_verdict": "结论", "learned_eval_rows": "用于评估的条数",
        # ---- job notice ----
        "notice_finished": "已完成", "notice_failed": "失败", "notice_stopped": "已停止",
        "notice_body": "{job}任务 {name}：{state}", "job_train": "训练", "job_merge": "合并", "job_export": "导出",
        "job_download": "下载",
        # ---- models ----
        "col_m_name": "名称", "col_m_architecture": "架构", "col_m_parameters": "参数量",
        "col_m_size": "大小", "col_m_chat_template": "对话模板", "col_m_train_fit": "显存够训练吗",
        "col_m_chat_fit": "显存够对话吗", "col_m_where": "来源", "col_m_path": "文件夹",
        "has_yes": "有", "has_no": "无", "fits_yes": "够", "fits_no": "不够", "no_gpu_here": "本机没有显卡", "fit_bits": "{bits} 位",
        "where_embedded": "内置", "where_workspace": "工作区 models 文件夹", "where_merged": "合并后的模型",
        "where_allowed": "允许读取的文件夹", "not_converted": "首次使用时转换", "unreadable": "无法读取：{why}",
        "models_no_gpu": "这台机器没有显卡：无法判断模型是否放得进显存。训练和对话会在 CPU 上进行（较慢，内置模型没问题）。",
        "models_gpu": "当前空闲显存：{free}。“显存够训练吗”按默认设置的 4 位 QLoRA 估算；对话一栏是放得下的最高精度。",
        "dl_none": "还没有下载任务。",
        "dl_starting": "正在开始下载 {repo}……",
        "dl_running": "正在下载 {repo}：{done} / {total} · {speed}/秒 · 还需 {left}",
        "dl_running_early": "正在下载 {repo}：{done} / {total}",
        "dl_finished": "{repo} 已下载到 <code>{path}</code>（{total}）。训练页和对话页里已经可以选择它。",
        "dl_stopped": "{repo} 的下载已停止，已下载 {done} / {total}。再次开始下载会从中断处继续。",
        "dl_failed": "{repo} 下载失败：{error}",
        "dl_started": "已开始下载 {repo}。", "dl_stopping": "正在停止下载……",
        "dl_nothing": "当前没有正在进行的下载。",
        "dl_dataset_running": "正在以流式读取 {repo}：已抽取 {share}",
        "dl_dataset_finished": "已从 {repo} 随机抽取 {rows} 条，保存为 <code>{path}</code>。数据页里已经可以选择它。",
        "dl_dataset_stopped": "已停止从 {repo} 抽样，没有保留任何数据。再次开始会重新抽样。",
        # ---- language switch ----
        "source_base": "基础模型 · {name}", "source_merged": "合并模型 · {name}", "source_model": "模型 · {name}",
        "source_adapter": "适配器 · {name}", "merge_failed_log": "合并失败：见下面的日志。",
        "phrase_no_gpu": "（无显卡）", "phrase_compute": "计算",
        "state_stopped_empty": "训练开始前已停止（没有可保存的内容）",
        # ---- first run: time estimate, did it learn ----
        "estimate_table": "时间：在这台{device}上大约 **{time}**，依据实测速度表（从第一步起显示实际剩余时间）。",
        "estimate_run": "时间：大约 **{time}**，依据此前的运行 {run} 在这里测得的速度。",
        "estimate_first_step": "时间：这台设备还没有实测速度；从第一步起显示剩余时间。",
        "estimate_long": "这次运行大约需要 {time}：减少步数、缩短最大序列长度或使用显卡都能缩短时间。",
        "minutes": "{n} 分钟", "hours": "{n} 小时", "device_cpu": "电脑的处理器（CPU）",
        "learned_title": "学到了吗？",
        "learned_loss": "在 {rows} 条留出的评估数据上的评估损失：基础模型 {before} → 微调后 {after}。",
        "learned_better": "在留出的数据上，微调后的模型比基础模型表现更好。",
        "learned_same": "在留出的数据上，微调后的模型与基础模型表现相当：它还没学到多少；试试增加步数或提高学习率。",
        "learned_worse": "在留出的数据上，微调后的模型比基础模型表现更差；试试增加步数、降低学习率，或使用模型自带的对话模板。",
        "learned_none": "没有评估集：在“数据”页留出一部分数据，才能看出一次运行是否学到了东西。",
        "learned_question": "留出的问题", "learned_expected": "参考答案", "learned_base": "基础模型",
        "learned_tuned": "微调后的模型",
        "col_learned": "评估损失（基础 → 微调）", "verdict_better": "更好", "verdict_same": "相当",
        "verdict_worse": "更差", "verdict_unknown": "未知",
        # ---- fit check ----
        "fit_fits": "✅ 放得下：大约需要 {need} GiB {where}，当前空闲 {free} GiB。",
        "fit_tight": "⚠️ 比较紧：大约需要 {need} GiB {where}，当前空闲 {free} GiB。可能会内存不足，但仍然可以开始。",
        "fit_no": "⛔ 现在放不下：大约需要 {need} GiB {where}，当前空闲 {free} GiB（请关闭占用它的程序）。",
        "fit_never": "⛔ 放不下：大约需要 {need} GiB {where}，而这台机器总共只有 {total} GiB。",
        "fit_would": "这样就放得下：{changes}。",
        "fit_where_gpu": "显存", "fit_where_ram": "内存",
        "fit_merge_exact": "逐个张量合并：不需要显卡。",
        "fit_merge_peft": "这个适配器要把整个模型放进内存来合并（{why}）。",
        "fit_chat": "✅ 用 {bits} 位加载：大约需要 {need} GiB 显存，当前空闲 {free} GiB。",
        "fit_chat_smaller": "⚠️ 用 {bits} 位加载：16 位大约需要 {need16} GiB 显存，当前空闲 {free} GiB。",
        "fit_int4_hint": "想回复更快，可以把“精度”选为 int4：速度约是 4 位 NF4 的五倍（在 7B 上实测），"
                         "加载时要先编译一两分钟。",
        "fit_chat_no": "⛔ 放不下：即使 4 位也大约需要 {need} GiB 显存，当前空闲 {free} GiB。",
        "fitfix_quantization": "开启 4 位量化", "fitfix_offload_activations": "把激活值放到内存",
        "fitfix_gradient_checkpointing": "开启梯度检查点", "fitfix_batch_size": "批大小 {v}",
        "fitfix_grad_accum": "梯度累积 {v}", "fitfix_max_seq_length": "最长序列 {v}", "fitfix_lora_r": "LoRA 秩 {v}",
        "retry_fit": "用放得下的设置重试（{changes}）",
        "retried": "已用 {changes} 重新开始，新的训练记录：{run}。",
        "retry_nothing": "已经没有更小的设置可试了：请换一个更小的模型。",
        "base_as_trained_cpu": "这次训练没有用显卡，训练时用的就是原始权重：这里“按训练时”就是原始权重。",
        # ---- chat speed ----
        "chat_speed": "{name}：每秒 {tps} 个 token，首个 token 用时 {first} 秒（共 {tokens} 个 token）。",
        "chat_loading": "{name}：正在加载，{s} 秒",
        "chat_warming": "{name}：正在预热（准备快速回答），{s} 秒",
        "chat_ready": "{name}：已就绪，预热用了 {s} 秒。",
        "chat_plain": "{name}：无法启用快速回答（{why}），改用普通方式回答，速度较慢。",
        "chat_training_cpu": "正在训练：对话和训练共用 CPU，两者都会变慢。",
        "chat_training_gpu": "正在训练：显存还有 {free} GiB 空闲。对话只会用放得下的精度加载模型，回答时训练可能变慢。",
        # ---- q4_0 ----
        "export_q4_0_instead": "4 位文件是 **Q4_0**，用 gguf 包在这里生成：Q4_K_M 需要 llama.cpp 的 llama-quantize，"
                               "而这台机器上没有安装（把它放到 PATH 里，或用环境变量 QLORA_STUDIO_LLAMA_QUANTIZE "
                               "指向它，下次就能得到 Q4_K_M）。Ollama、llama.cpp 和 LM Studio 都能像其他 GGUF 一样加载 "
                               "Q4_0；它和 Q4_K_M 差不多小，但回答与 16 位文件的差别稍大一些，小模型（约 10 亿参数以下）"
                               "变化明显：这类模型请选 q8_0。",
    },
}


# ---- the language switch ------------------------------------------------------------------
COOKIE = "qlora_studio_lang"  # 'zh' or 'en': the switch's choice, sent with every request, kept a year
LANGUAGES = [("中文", "zh"), ("English", "en")]  # each named in its own language

# The page's language lives in the gradio frontend's i18n store, which Settings → Language sets through
# `changeLocale` of the frontend's core module. That module is found by the address the page loaded it
# from, so the import returns the very instance the page uses (gradio's own zh-CN table then translates
# its built-in text too: the upload box, table menus).
_SET_LOCALE = """
const qsLocale = async (choice) => {
  const core = performance.getEntriesByType('resource').map(e => e.name).find(n => /\\/assets\\/core-[\\w-]+\\.js$/.test(n));
  if (core) (await import(core)).changeLocale(choice === 'zh' ? 'zh-CN' : 'en');
};
"""
# On page load: the saved choice, else the browser's language; returned to the switch.
LOAD_JS = "async () => {" + _SET_LOCALE + f"""
  const saved = (document.cookie.match(/(?:^|; ){COOKIE}=(zh|en)/) || [])[1];
  const choice = saved || ((navigator.language || '').toLowerCase().startsWith('zh') ? 'zh' : 'en');
  await qsLocale(choice);
  return choice;
}}"""
# On a switch: remember the choice (the cookie goes with the requests that redraw the server's text), show it.
SWITCH_JS = "async (choice) => {" + _SET_LOCALE + f"""
  document.cookie = '{COOKIE}=' + choice + '; path=/; max-age=31536000; SameSite=Lax';
  await qsLocale(choice);
  return choice;
}}"""


def lang(request: gr.Request | None) -> str:
    """'zh' or 'en': the header switch's choice, else 'zh' when the browser prefers Chinese."""
    try:
        headers = request.headers if request is not None else {}
        cookie, accept = headers.get("cookie", ""), headers.get("accept-language", "")
    except Exception:
        cookie, accept = "", ""
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value in SAY:
            return value
    first = accept.split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"


def say(key: str, language: str = "en", **kw) -> str:
    """A server-made message in the user's language."""
    text = SAY.get(language, SAY["en"]).get(key) or SAY["en"].get(key, key)
    return text.format(**kw)


def state(name: str, adapter, language: str = "en") -> str:
    """A run's state in words; a run stopped before its first step says it kept nothing."""
    return say("state_stopped_empty" if name == "stopped" and not adapter else "state_" + name, language)


def both(key: str, **kw) -> str:
    """A message that stays on screen (Markdown), in both languages: the page shows the one the switch chose.

    Text redrawn on a switch (tables, charts, choices, live views) uses `say`; a one-off reply to a
    press (a run started, a merge written) has nothing to redraw it from, so it carries both
    languages and assets/style.css hides the one the page's `lang` does not name. A value that is a
    function of the language (a model's name as each language writes it) is called with it.
    """
    return "".join(f'<span class="qs-say" lang="{language}">'
                   f'{say(key, language, **{k: v(language) if callable(v) else v for k, v in kw.items()})}</span>'
                   for language in SAY)
