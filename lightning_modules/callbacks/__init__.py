"""Lightning callbacks that observe training and draw what they see: attention maps, evaluation
figures, ProtoPNet pushes, test results."""
