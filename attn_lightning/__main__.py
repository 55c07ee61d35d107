from attn_lightning.train import main

main()
