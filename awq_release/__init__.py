"""What every package of the platform shares, and nothing else: the error hierarchy (`errors`) and
the reading of the user's text files (`texts`). It imports no other package of ours."""
