from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from tokenizers import Tokenizer
from torchtune.data import Message, PromptTemplate, truncate
from torchtune.modules.transforms import Transform
from torchtune.modules.transforms.tokenizers import ModelTokenizer


class SmolLM2Tokenizer(ModelTokenizer, Transform):
    """
    SmolLM2 byte-level BPE tokenizer (a HF ``tokenizer.json``) with ChatML formatting
    exactly as SmolLM2-Instruct's chat template renders it::

        <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{prompt}<|im_end|>\\n
        <|im_start|>assistant\\n{response}<|im_end|>\\n

    Each message's text between the special tokens (``"{role}\\n{content}"``) is encoded
    in one piece, so the ids equal those of tokenizing the whole rendered conversation.

    Args:
        path (str): ``tokenizer.json``, or a directory holding it.
        max_seq_len (Optional[int]): truncate tokenized conversations to this length,
            keeping the final eos. Default: None
        prompt_template (Optional[PromptTemplate]): applied to the messages before ChatML.
        default_system_prompt (Optional[str]): system message inserted when the
            conversation has none, as the Instruct chat template does. Default: the
            SmolLM2-Instruct one.
    """

    DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

    def __init__(
        self,
        path: str,
        max_seq_len: Optional[int] = None,
        prompt_template: Optional[PromptTemplate] = None,
        default_system_prompt: Optional[str] = DEFAULT_SYSTEM_PROMPT,
    ):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"SmolLM2 tokenizer file not found: {path}")
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a valid HF tokenizer.json: {e}") from e
        self.path = str(path)
        self.max_seq_len = max_seq_len
        self.prompt_template = prompt_template
        self.default_system_prompt = default_system_prompt
        self.special_tokens: Dict[str, int] = {
            t.content: i
            for i, t in self._tokenizer.get_added_tokens_decoder().items()
            if t.special
        }
        for name in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
            if name not in self.special_tokens:
                raise ValueError(f"{path} has no special token {name}: not a SmolLM2 tokenizer")
        self.im_start_id = self.special_tokens["<|im_start|>"]
        self.im_end_id = self.special_tokens["<|im_end|>"]
        # SmolLM2-Instruct: bos <|im_start|>, eos and pad <|im_end|> (generation_config.json)
        self.bos_id = self.im_start_id
        self.eos_id = self.im_end_id
        self.pad_id = self.im_end_id
        self.stop_tokens = [self.im_end_id, self.special_tokens["<|endoftext|>"]]
        self._newline = self._tokenizer.encode("\n", add_special_tokens=False).ids

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> List[int]:
        """Encode text; special-token strings in ``text`` map to their ids."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, token_ids: List[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def _with_system(self, messages: List[Message]) -> List[Message]:
        if self.default_system_prompt is None or (messages and messages[0].role == "system"):
            return messages
        return [Message(role="system", content=self.default_system_prompt, masked=True)] + list(
            messages
        )

    def tokenize_messages(
        self, messages: List[Message], *, add_end_tokens: bool = True
    ) -> Tuple[List[int], List[bool]]:
        """
        Args:
            messages (List[Message]): the conversation.
            add_end_tokens (bool): close the last message with ``<|im_end|>\\n``. Set it
                to False for generation, with a final (possibly empty) assistant message
                that the model is to continue. Default: True

        Returns:
            Tuple[List[int], List[bool]]: token ids and, per token, whether it is masked
            (excluded from the loss: ``Message.masked``).
        """
        if self.prompt_template is not None:
            messages = self.prompt_template(messages)
        messages = self._with_system(messages)
        tokens: List[int] = []
        mask: List[bool] = []
        for index, message in enumerate(messages):
            if any(item["type"] != "text" for item in message.content):
                raise ValueError(f"SmolLM2 is text-only; got content {message.content!r}")
            text = "".join(item["content"] for item in message.content)
            piece = [self.im_start_id] + self.encode(f"{message.role}\n{text}")
            is_last = index == len(messages) - 1
            if add_end_tokens or not is_last:
                piece += [self.im_end_id] + self._newline
            tokens.extend(piece)
            mask.extend([message.masked] * len(piece))
        if self.max_seq_len is not None and len(tokens) > self.max_seq_len:
            tokens = truncate(tokens, self.max_seq_len, self.eos_id if add_end_tokens else None)
            mask = truncate(mask, self.max_seq_len, mask[-1] if add_end_tokens else None)
        return tokens, mask

    def generation_prompt(self, messages: List[Message]) -> List[int]:
        """Token ids of ``messages`` followed by ``<|im_start|>assistant\\n``."""
        tokens, _ = self.tokenize_messages(
            list(messages) + [Message(role="assistant", content="")], add_end_tokens=False
        )
        return tokens

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> Mapping[str, Any]:
        """Tokenize ``sample["messages"]`` into ``sample["tokens"]`` and ``sample["mask"]``."""
        messages = sample.pop("messages")
        tokens, mask = self.tokenize_messages(messages, add_end_tokens=not inference)
        sample["tokens"] = tokens
        sample["mask"] = mask
        return sample
