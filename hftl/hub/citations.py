"""BibTeX of the papers behind hftl's methods, keyed by the short names model cards use."""

from __future__ import annotations

CITATIONS: dict[str, str] = {
    "dann": """@article{ganin2016dann,
  title   = {Domain-Adversarial Training of Neural Networks},
  author  = {Ganin, Yaroslav and Ustinova, Evgeniya and Ajakan, Hana and Germain, Pascal and Larochelle, Hugo and Laviolette, Fran{\\c{c}}ois and Marchand, Mario and Lempitsky, Victor},
  journal = {Journal of Machine Learning Research},
  volume  = {17},
  number  = {59},
  pages   = {1--35},
  year    = {2016}
}""",
    "cdan": """@inproceedings{long2018cdan,
  title     = {Conditional Adversarial Domain Adaptation},
  author    = {Long, Mingsheng and Cao, Zhangjie and Wang, Jianmin and Jordan, Michael I.},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2018}
}""",
    "mdd": """@inproceedings{zhang2019mdd,
  title     = {Bridging Theory and Algorithm for Domain Adaptation},
  author    = {Zhang, Yuchen and Liu, Tianle and Long, Mingsheng and Jordan, Michael I.},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2019}
}""",
    "mcc": """@inproceedings{jin2020mcc,
  title     = {Minimum Class Confusion for Versatile Domain Adaptation},
  author    = {Jin, Ying and Wang, Ximei and Long, Mingsheng and Wang, Jianmin},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2020}
}""",
    "dan": """@inproceedings{long2015dan,
  title     = {Learning Transferable Features with Deep Adaptation Networks},
  author    = {Long, Mingsheng and Cao, Yue and Wang, Jianmin and Jordan, Michael I.},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2015}
}""",
    "jan": """@inproceedings{long2017jan,
  title     = {Deep Transfer Learning with Joint Adaptation Networks},
  author    = {Long, Mingsheng and Zhu, Han and Wang, Jianmin and Jordan, Michael I.},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2017}
}""",
    "coral": """@inproceedings{sun2016deepcoral,
  title     = {Deep {CORAL}: Correlation Alignment for Deep Domain Adaptation},
  author    = {Sun, Baochen and Saenko, Kate},
  booktitle = {European Conference on Computer Vision Workshops (ECCV-W)},
  year      = {2016}
}""",
    "adda": """@inproceedings{tzeng2017adda,
  title     = {Adversarial Discriminative Domain Adaptation},
  author    = {Tzeng, Eric and Hoffman, Judy and Saenko, Kate and Darrell, Trevor},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2017}
}""",
    "lora": """@inproceedings{hu2022lora,
  title     = {{LoRA}: Low-Rank Adaptation of Large Language Models},
  author    = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and Wang, Shean and Wang, Lu and Chen, Weizhu},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
    "ia3": """@inproceedings{liu2022ia3,
  title     = {Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning},
  author    = {Liu, Haokun and Tam, Derek and Muqeeth, Mohammed and Mohta, Jay and Huang, Tenghao and Bansal, Mohit and Raffel, Colin},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2022}
}""",
    "kd": """@article{hinton2015distilling,
  title   = {Distilling the Knowledge in a Neural Network},
  author  = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal = {arXiv preprint arXiv:1503.02531},
  year    = {2015}
}""",
    "fitnets": """@inproceedings{romero2015fitnets,
  title     = {{FitNets}: Hints for Thin Deep Nets},
  author    = {Romero, Adriana and Ballas, Nicolas and Kahou, Samira Ebrahimi and Chassang, Antoine and Gatta, Carlo and Bengio, Yoshua},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2015}
}""",
    "lwf": """@inproceedings{li2016lwf,
  title     = {Learning without Forgetting},
  author    = {Li, Zhizhong and Hoiem, Derek},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2016}
}""",
    "setfit": """@article{tunstall2022setfit,
  title   = {Efficient Few-Shot Learning Without Prompts},
  author  = {Tunstall, Lewis and Reimers, Nils and Jo, Unso Eun Seo and Bates, Luke and Korat, Daniel and Wasserblat, Moshe and Pereg, Oren},
  journal = {arXiv preprint arXiv:2209.11055},
  year    = {2022}
}""",
    "fomaml": """@inproceedings{finn2017maml,
  title     = {Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks},
  author    = {Finn, Chelsea and Abbeel, Pieter and Levine, Sergey},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2017}
}""",
    "reptile": """@article{nichol2018reptile,
  title   = {On First-Order Meta-Learning Algorithms},
  author  = {Nichol, Alex and Achiam, Joshua and Schulman, John},
  journal = {arXiv preprint arXiv:1803.02999},
  year    = {2018}
}""",
    "scalar_mix": """@inproceedings{peters2018elmo,
  title     = {Deep Contextualized Word Representations},
  author    = {Peters, Matthew E. and Neumann, Mark and Iyyer, Mohit and Gardner, Matt and Clark, Christopher and Lee, Kenton and Zettlemoyer, Luke},
  booktitle = {North American Chapter of the Association for Computational Linguistics (NAACL)},
  year      = {2018}
}""",
}
