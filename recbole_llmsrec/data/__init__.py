from recbole_llmsrec.data.dataset import LastItemSequentialDataset, create_dataset

__all__ = ["LastItemSequentialDataset", "create_dataset"]
