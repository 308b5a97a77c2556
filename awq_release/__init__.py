"""What every package of the platform shares, and nothing else: the error hierarchy (`errors`), the
reading of the user's text files (`texts`) and lazily imported package names (`lazy`). It imports
no other package of ours."""
