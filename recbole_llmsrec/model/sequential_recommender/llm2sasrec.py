r"""
LLM2SASRec
################################################

Reference:
    Jesse Harte et al. "Leveraging Large Language Models for Sequential Recommendation" in RecSys 2023,
    and Artun Boz et al. "Improving Sequential Recommendations with LLMs" (the extension).

RecBole's SASRec, unchanged except that its item embedding table starts from the items' text
embeddings, reduced to ``hidden_size`` (PCA by default), and is then trained as usual.
"""

from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_llmsrec.model.llm_init import initialise_item_embedding


class LLM2SASRec(SASRec):
    # what check_settings checks before anything trains (recbole_llmsrec.config)
    uses_item_text = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        initialise_item_embedding(self, config, dataset)
