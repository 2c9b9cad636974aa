"""``python -m semiseg.deploy MODEL INPUT_FOLDER_OR_FILE OUTPUT_FOLDER [--step 0.5] [--threads N]``."""
import sys

from semiseg.deploy.predict import main

sys.exit(main())
