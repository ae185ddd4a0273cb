"""The FungiCLEF 2025 wing: the few-shot system of Lu et al. ("Few-Shot Classification of Fungi
Species Using Contrastive Representation Learning and Multimodal Fusion", 2nd place).

Trainers (`config.trainer` names the module; each has `train_and_evaluate(config, workdir)`):
`full` (features -> stage 1 -> stage 2 -> ensemble; `configs/fungiclef.py`), `metadata_only`
(`configs/fungiclef.py:metadata_only`) and `evaluate` (a trained run scored on a CSV;
`configs/evaluate.py:model=RUN,fungiclef=CSV`, with `scoring`).

Parts: `features` (frozen image-tower token features, cached), `splits` (the full system's data
per split), `stage1` (DWCL over the tokens), `stage2` (Q-Former fusion with the metadata),
`report` (summary, table, evaluator entries), `tables` (observations from the CSVs),
`metadata` and `metadata_inputs` (metadata as sentence, fields and numbers; one builder for both
systems), `metadata_prior` (the count prior), `text` (BERT states of the sentences), `sampler`
(class-balanced batches), `synthetic_species` (the embedded stand-in data set) and `cli`.
"""
