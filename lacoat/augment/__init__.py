"""``lacoat augment``: paraphrases of training captions from an LLM or from built-in rules.

Modules, one job each: ``inputs`` (read Clotho, AudioCaps or plain caption CSVs), ``prompt`` (the
prompt template and its hash), ``backends`` (OpenAI-compatible endpoint, rules), ``rules`` (the
rule-based paraphraser), ``validate`` (parse answers, reject bad paraphrases), ``store`` (SQLite
store of answers), ``run`` (orchestration, output files). Training reads the output through
``RetrievalDataModule(augmented_captions=...)``.
"""
