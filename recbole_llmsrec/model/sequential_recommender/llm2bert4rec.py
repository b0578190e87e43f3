r"""
LLM2BERT4Rec
################################################

Reference:
    Jesse Harte et al. "Leveraging Large Language Models for Sequential Recommendation" in RecSys 2023.

RecBole's BERT4Rec, unchanged except that its item embedding table starts from the items' text
embeddings, reduced to ``hidden_size`` (PCA by default), and is then trained as usual. The
``[MASK]`` row keeps its random initialisation, as in the paper.
"""

from recbole.model.sequential_recommender.bert4rec import BERT4Rec

from recbole_llmsrec.model.llm_init import initialise_item_embedding


class LLM2BERT4Rec(BERT4Rec):
    # what check_settings checks before anything trains (recbole_llmsrec.config)
    uses_item_text = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        initialise_item_embedding(self, config, dataset)
