"""Built-in datasets (digits, MNIST, Fashion-MNIST, SVHN, CIFAR-10/100, image folders),
registered by ``plugin``; ``files`` holds the flow the file-based ones share."""
