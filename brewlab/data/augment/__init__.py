"""Data augmentation for distillation: new training text that the teacher labels.

Augmented copies need no gold label: the pipeline strips their labels, so the distiller trains
them with the KD and intermediate losses only. `ops`: the operations, built from the config and
applied to rows; `masked_lm`: the masked-LM operation; `language`: the text's language and
vocabulary.
"""
