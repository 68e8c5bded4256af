"""Fine-tuning and alignment on top of a trained model.

tasks.py     instruction data from tiny Shakespeare and checkable tasks, split the same way for
             every example (task_records), preference pairs, what alignment starts from
lora.py      LoRA / QLoRA adapters: apply_lora, merge (or merge_and_unload back to plain layers),
             save and load the adapters alone
sft.py       supervised fine-tuning data: chats rendered through the template, loss only on the
             assistant's tokens, short examples packed into one block
dpo.py       direct preference optimisation's loss and its logged statistics, pairs encoded
heads.py     SequenceHead (reward model, classifier), Bradley-Terry and distillation losses
rlhf.py      RLHF by REINFORCE with a baseline and a KL penalty to the reference
prune.py     magnitude pruning and 2:4 semi-structured sparsity, masks kept through fine-tuning
evaluate.py  fixed windows of a token stream (GPTQ calibration); what the examples report is
             measured by tinygrad_llm.eval (its chat tasks: eval/chat.py)
"""
from .dpo import dpo_loss, encode_pairs, sequence_logprobs
from .evaluate import windows
from .heads import SequenceHead, bradley_terry_loss, distillation_loss
from .lora import (LoRALinear, apply_lora, load_adapters, lora_layers, lora_state_dict,
                   merge_and_unload, merge_lora, save_adapters, unmerge_lora)
from .prune import apply_masks, magnitude_prune, prune_2_4, sparsity
from .rlhf import Reinforce, rollout
from .sft import SFTBatcher, pack_examples, segment_mask, sft_example
from .tasks import COURTESY, TASKS, alignment_setup, preference_pairs, task_records

__all__ = ["LoRALinear", "apply_lora", "lora_layers", "lora_state_dict", "save_adapters",
           "load_adapters", "merge_lora", "unmerge_lora", "merge_and_unload", "sft_example",
           "pack_examples", "segment_mask",
           "SFTBatcher", "dpo_loss", "sequence_logprobs", "encode_pairs", "magnitude_prune",
           "prune_2_4", "apply_masks", "sparsity", "SequenceHead", "bradley_terry_loss",
           "distillation_loss", "Reinforce", "rollout", "task_records", "preference_pairs",
           "alignment_setup", "TASKS", "COURTESY", "windows"]
