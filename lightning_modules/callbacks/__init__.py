"""Lightning callbacks; ``experiments/base.yaml`` lists the defaults, in the order they run.

Most observe and draw or write what they see: evaluation figures, attention maps, the results
files (``metrics.json``, ``predictions.csv``), W&B panels. These change the run:
``PrototypePush`` triggers ProtoPNet's push (prototypes projected, last layer refitted);
``EpochSeeds`` reseeds the RNGs at each epoch start; ``MidEpochMetrics`` puts back an interrupted
epoch's metric states; ``ResumableInterruption`` holds a signal through validation and stops the
run; ``ResultsWriter``, with ``--calibrate=temperature``, stores the fitted temperature in the
tested checkpoint. ``run_context`` is what the CLI hands them beyond the trainer: the run's name,
resume command and the test report's options.
"""
