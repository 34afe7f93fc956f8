"""Teacher outputs on training batches, from one provider (`provider.TeacherOutputs`) whatever
keeps them: the teacher run on each batch (`provider`), logits kept in memory for one run
(`memory`, `trainer.cache_teacher_outputs`) or the teacher-output store on disk (`disk`,
`trainer.teacher_store`). A distiller asks its provider (`choice.outputs_for`) and never knows
which backend it has.

The store (`<cache>/teacher_outputs/<task>-<key>/`) holds a teacher's outputs on a training set,
computed once and read from disk by every later epoch, job, seed and rank. An entry is keyed by
the teacher's weights, the encoded training inputs (offline augmented copies included) and the
stored precision (`layout`); it holds one flat file per array (`logits`, `hidden.<layer>`,
`attention.<layer>`), each example's row unpadded and found by its length, and `manifest.json`
listing the arrays that are complete. An array is written aside, on space reserved up front, and
renamed in; the manifest is rewritten after it, so a kill or a full disk never leaves a half array
in an entry, and a later objective that needs another layer adds that array to the same entry
(`store`). One process builds an entry at a time (a file lock); the others wait, lending it their
threads, then read (`locking`). Reads are memory-mapped (`disk`); a run's `plan` decides where
the store is used.

Every kept teacher output is computed in canonical batches (`canonical`), not in the training
batches: on a CPU an example's outputs change in their last bits with the shape of the batch it
is run in, and these batches make every kept teacher output a function of the example alone.
The in-memory logits of a run without the store are filled the same way, so the two train the
same student bit for bit; a teacher run online on each training batch (intermediate matches
without the store) agrees with the store to rounding only.
"""
