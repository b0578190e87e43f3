from recbole_llmsrec.data.dataset import LastItemSequentialDataset, create_dataset
from recbole_llmsrec.data.sampling import data_preparation

__all__ = ["LastItemSequentialDataset", "create_dataset", "data_preparation"]
