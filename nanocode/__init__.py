"""The contracts every part shares: errors and atomic writes, the SOUL and the tool spec, the
conversation record and its OpenAI form. It imports no other part of nanocode."""
