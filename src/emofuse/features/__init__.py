"""Features stage: frame features and word vectors, and the on-disk feature store.

    audio.py      load_audio(utt, sr): any soundfile/PyAV file -> float32 mono, offsets honoured
    frames.py     compare_lld, fbank40, spectrogram8k, waveform on a 10 ms grid; speech_mask
    words.py      minilm (contextual), glove50, glove-file:PATH word vectors
    normalise.py  Normaliser: z-normalisation fitted on training utterances only
    vocab.py      Vocabulary: token ids (0 pad, 1 unknown) for learned embeddings
    store/        FeatureStore(root).extract(corpus, features, align, workers) / .load(...):
                  layout.py (entry paths), extract.py (the engine), load.py (reading back)
    batch.py      UtteranceFeatures, collate -> Batch (the contract with the models)

Modules are imported where used: loading openSMILE, MiniLM or torch costs seconds.
"""
