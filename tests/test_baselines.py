"""TALLRec, CoLLM and LLaRA on tiny data with a tiny Llama; LoRA on the shared backbone."""

import pytest
import torch

from recbole_llmsrec.config import Config
from recbole_llmsrec.llm.backbone import LLMBackbone

LORA = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.5, "lora_target_modules": ["q_proj", "v_proj"]}


def test_lora_backbone_trains_adapters_only(tiny_config_dict):
    config = Config(model="LLMSRec", config_dict={**tiny_config_dict, **LORA})
    llm = LLMBackbone.from_config(config, lora=True)
    trainable = [name for name, p in llm.named_parameters() if p.requires_grad]
    assert llm.has_lora and trainable and all("lora_" in name for name in trainable)
    assert any(name.endswith("q_proj.lora_A.default.weight") for name in trainable)
    assert not any("k_proj" in name for name in trainable)

    # LoRA's dropout follows the mode; the base LM never drops out
    llm.train()
    modes = {name: m.training for name, m in llm.model.named_modules()}
    assert all(mode for name, mode in modes.items() if name.endswith("lora_dropout"))
    assert not any(mode for name, mode in modes.items() if "lora_dropout" not in name)
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    for name, p in llm.named_parameters():  # nonzero B, so the adapter path (and its dropout) shows
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    torch.manual_seed(0)
    assert not torch.allclose(llm.encode(ids, mask, {}), llm.encode(ids, mask, {}))
    llm.eval()
    assert not any(m.training for m in llm.model.modules())
    assert torch.equal(llm.encode(ids, mask, {}), llm.encode(ids, mask, {}))

    base_before = {n: p.detach().clone() for n, p in llm.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in llm.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in llm.parameters() if p.requires_grad], lr=0.01)
    llm.train()
    llm.encode(ids, mask, {}).pow(2).mean().backward()
    optimizer.step()
    assert all(torch.equal(p, base_before[n]) for n, p in llm.named_parameters() if not p.requires_grad)
    assert all(not torch.equal(p, lora_before[n]) for n, p in llm.named_parameters() if p.requires_grad)


def test_lora_backbone_names_missing_settings(tiny_config_dict):
    config = Config(model="LLMSRec", config_dict={**tiny_config_dict, **LORA, "lora_alpha": None})
    with pytest.raises(KeyError, match=r"\['lora_alpha'\] are not set; set them in properties/model/LLMSRec.yaml"):
        LLMBackbone.from_config(config, lora=True)
